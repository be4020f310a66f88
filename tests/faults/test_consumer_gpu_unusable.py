"""Fault: a GPU consumer on a host whose GPU cannot be used (this machine has no NVIDIA runtime at all).

It must not burn GPU tasks through their attempts: its probe fails, it takes no GPU work (the tasks stay pending,
no attempt used, nothing failed), it says why in its log at WARNING and in its heartbeat, and it still runs CPU tasks.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest

from common.messages import GPU_QUEUE
from job_consumer.containers import Engine
from job_consumer.housekeeping import Housekeeping
from job_consumer.workspace import Workspace
from tests.consumer.conftest import (
    PrivateApi,
    queue_length,
    start_consumer_process,
    stop_process,
)
from tests.consumer.helpers import mock_api, zip_bytes

pytestmark = pytest.mark.docker


def test_gpu_consumer_without_a_usable_gpu_takes_no_gpu_task(
    private_api: PrivateApi, model_images, amqp_url, consumer_docker, tmp_path, consumer_id
):
    """GPU tasks wait untouched while the GPU is unusable; the reason is logged and reported; CPU work goes on."""
    if any(runtime == "nvidia" for runtime in (consumer_docker.info().get("Runtimes") or {})):
        pytest.skip("this engine has the NVIDIA runtime: the fault (no usable GPU) cannot be injected here")
    gpu_model = private_api.add_model(model_images["copy"], use_gpu=True)
    cpu_model = private_api.add_model(model_images["copy"])
    gpu_uids = [private_api.submit(gpu_model["human_readable_id"], zip_bytes({"a": b"b"})) for _ in range(3)]
    cpu_uid = private_api.submit(cpu_model["human_readable_id"], zip_bytes({"a": b"b"}))
    process, log_path = start_consumer_process(
        private_api, amqp_url, consumer_id, tmp_path, GPU_DEVICE="0", GPU_REPROBE_SECONDS="2"
    )
    try:
        assert private_api.wait(cpu_uid, {"finished", "failed"})["status"] == "finished"
        time.sleep(6)  # a few probes later
        for uid in gpu_uids:
            status = private_api.status(uid)
            assert status["status"] == "pending" and status["attempt"] == 0 and not status["error"], status
        assert queue_length(amqp_url, GPU_QUEUE) == 3, "the GPU tasks' messages were never taken"
        log_text = log_path.read_text()
        warnings = [line for line in log_text.splitlines() if " WARNING " in line and "GPU 0 is unusable" in line]
        assert len(warnings) >= 2, log_text[-3000:]
        assert "could not select device driver" in warnings[0]
        health = private_api.http.get("/healthz").json()
        (mine,) = [c for c in health["consumers"] if c["name"] == consumer_id]
        assert mine["gpu_usable"] is False and "could not select device driver" in mine["gpu_reason"]
        assert GPU_QUEUE not in mine["queues"]
        assert any("GPU" in warning for warning in health.get("warnings", []))
    finally:
        assert stop_process(process) == 0
    assert not consumer_docker.containers.list(
        all=True, sparse=True, filters={"label": "inference-server.role=gpu-probe"}
    ), "no probe container is left behind"


def test_gpu_state_is_in_the_consumer_heartbeat(consumer_docker, tmp_path):
    """The heartbeat payload (POST /internal/consumers/{id}/heartbeat) carries gpu_usable=false and the reason."""
    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/heartbeat"):
            sent.append({"path": request.url.path, **json.loads(request.content)})
        return httpx.Response(200, json={"live": []})

    api = mock_api(handler, "gpu-host-0123456789ab")
    housekeeping = Housekeeping(
        api=api,
        engine=Engine(consumer_docker, pull_missing_images=False),
        workspace=Workspace(tmp_path, instance_id="gpu-host-0123456789ab"),
        queues=["inference.tasks.gpu", "inference.tasks.cpu"],
        scope="test-gpu-probe",
        gpu_device="0",
        gpu_probe_image=os.environ.get("BUSYBOX_IMAGE", "inference-server-ci/busybox"),
    )
    if any(runtime == "nvidia" for runtime in (consumer_docker.info().get("Runtimes") or {})):
        pytest.skip("this engine has the NVIDIA runtime")
    housekeeping.tick()
    assert housekeeping.gpu_usable is False
    assert housekeeping.active_queues() == ["inference.tasks.cpu"]
    (beat,) = sent
    assert beat["path"] == "/internal/consumers/gpu-host-0123456789ab/heartbeat"
    assert beat["name"] == "gpu-host" and beat["queues"] == ["inference.tasks.cpu"] and beat["gpu_device"] == "0"
    assert beat["gpu_usable"] is False and "could not select device driver" in beat["gpu_reason"]
    assert isinstance(beat["free_disk_bytes"], int)
