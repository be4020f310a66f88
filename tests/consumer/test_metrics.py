"""Metrics after a real run: a consumer process with its metrics server, and the private API's GET /metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.messages import CPU_QUEUE
from tests.consumer.conftest import PrivateApi, _free_port, start_consumer_process, stop_process, wait_until
from tests.consumer.helpers import zip_bytes

pytestmark = pytest.mark.docker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """GET url (no headers) and parse the Prometheus text: {(sample name, labels): value}."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_after_finished_failed_and_cancelled_tasks(
    private_api: PrivateApi, amqp_url: str, model_images: dict[str, str], tmp_path: Path
) -> None:
    """Both services count what really happened: outcomes, failure classes, phases, bytes, consumers, disk."""
    copy = private_api.add_model(model_images["copy"])["human_readable_id"]
    exit3 = private_api.add_model(model_images["exit3"])["human_readable_id"]
    sleep = private_api.add_model(model_images["sleep"])["human_readable_id"]
    data = zip_bytes({"ct.dcm": b"x" * 4000})
    finished = private_api.submit(copy, data)
    failed = private_api.submit(exit3, data)
    cancelled = private_api.submit(sleep, data)
    assert private_api.http.delete(f"/api/tasks/{cancelled}").status_code == 200  # its message is dropped unrun
    port = _free_port()
    process, log_path = start_consumer_process(
        private_api, amqp_url, "metrics-consumer", tmp_path, METRICS_PORT=str(port)
    )
    consumer_url = f"http://127.0.0.1:{port}/metrics"
    try:
        assert private_api.wait(finished, {"finished", "failed"})["status"] == "finished"
        assert private_api.wait(failed, {"finished", "failed"})["status"] == "failed"
        assert private_api.http.get(f"/api/tasks/{finished}").status_code == 200  # the output, served once

        def counted_both() -> bool:
            return value(scrape(consumer_url), "inference_consumer_tasks_total", model=exit3, outcome="failed") == 1

        wait_until(counted_both, 30, f"the consumer to count the failed task (log {log_path})")
        mine = scrape(consumer_url)
        theirs = scrape(f"{private_api.url}/metrics")
    finally:
        stop_process(process)

    assert value(mine, "inference_consumer_tasks_total", model=copy, outcome="finished") == 1
    assert value(mine, "inference_consumer_tasks_total", model=exit3, outcome="failed") == 1
    assert value(mine, "inference_consumer_task_failures_total", model=exit3, reason_class="model_exit") == 1
    for phase in ("queued", "preparing", "running", "uploading"):
        assert value(mine, "inference_consumer_task_phase_seconds_count", model=copy, phase=phase) == 1, phase
    assert value(mine, "inference_consumer_task_phase_seconds_sum", model=copy, phase="queued") > 0
    assert value(mine, "inference_consumer_downloaded_bytes_total", kind="input") == 2 * len(data)
    assert value(mine, "inference_consumer_uploaded_bytes_total", kind="output") > 0
    assert value(mine, "inference_consumer_uploaded_bytes_total", kind="logs") > 0
    assert value(mine, "inference_consumer_work_dir_free_bytes") > 0
    assert any(
        name == "inference_consumer_info" and ("consumer", "metrics-consumer") in labels for name, labels in mine
    )

    assert value(theirs, "inference_tasks", state="finished", model=copy) == 1
    assert value(theirs, "inference_tasks", state="failed", model=exit3) == 1
    assert value(theirs, "inference_tasks", state="cancelled", model=sleep) == 1
    assert value(theirs, "inference_task_failures_total", model=exit3, reason_class="model_exit") == 1
    assert value(theirs, "inference_task_submissions_total", model=copy) == 1
    assert value(theirs, "inference_consumers", queue=CPU_QUEUE) == 1
    assert value(theirs, "inference_queue_depth", queue=CPU_QUEUE) == 0
    assert any(name == "inference_consumer_free_disk_bytes" and v > 0 for (name, _labels), v in theirs.items())
    assert value(theirs, "inference_received_bytes_total", kind="input") == 3 * len(data)
    assert value(theirs, "inference_received_bytes_total", kind="output") == value(
        mine, "inference_consumer_uploaded_bytes_total", kind="output"
    )
    assert value(theirs, "inference_sent_bytes_total", kind="input") == 2 * len(data)
    assert value(theirs, "inference_sent_bytes_total", kind="output") > 0
    assert value(theirs, "inference_data_dir_free_bytes") > 0
