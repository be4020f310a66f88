"""Fault: the private API restarts (an upgrade, `docker compose up -d`) while a task runs.

The model ends while the private API is down: the consumer keeps the log and the output, retries with backoff, and
stores both once the private API is back. The task finishes at attempt 1 with its output; nothing runs twice.
"""

from __future__ import annotations

import io
import time
import zipfile

import pytest

from job_consumer.sandbox import TASK_LABEL
from tests.consumer.conftest import PrivateApi, start_consumer_process, stop_process, wait_until
from tests.consumer.helpers import zip_bytes

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


def test_private_api_restart_mid_task_keeps_attempt_one(
    private_api: PrivateApi, model_images, amqp_url, consumer_docker, tmp_path, consumer_id
):
    """Down from mid-run until after the model ended (longer than the lease): the result is stored, attempt 1."""
    model = private_api.add_model(model_images["slow"])  # works 6 s, then writes ok.txt
    uid = private_api.submit(model["human_readable_id"], zip_bytes({"a": b"b"}))
    process, log_path = start_consumer_process(private_api, amqp_url, consumer_id, tmp_path)
    try:
        running = {"label": f"{TASK_LABEL}={uid}", "status": "running"}
        wait_until(lambda: bool(consumer_docker.containers.list(sparse=True, filters=running)), 60, "the model to run")
        private_api.stop()
        down_since = time.monotonic()
        exited = {"label": f"{TASK_LABEL}={uid}", "status": "exited"}
        wait_until(
            lambda: bool(consumer_docker.containers.list(all=True, sparse=True, filters=exited)),
            30,
            "the model to end while the private API is down",
        )
        time.sleep(max(0.0, 8 - (time.monotonic() - down_since)))  # down longer than LEASE_SECONDS (6)
        private_api.start()
        status = private_api.wait(uid, {"finished", "failed"}, timeout=120)
        assert status["status"] == "finished" and status["attempt"] == 1, status
        with zipfile.ZipFile(io.BytesIO(private_api.http.get(f"/api/tasks/{uid}").content)) as archive:
            assert archive.read("ok.txt") == b"ok\n"
        assert "working" in private_api.http.get(f"/api/tasks/{uid}/logs").text
    finally:
        assert stop_process(process) == 0
    log_text = log_path.read_text()
    assert "trying again" in log_text, "the consumer retried while the private API was down"
    assert "released" not in log_text
