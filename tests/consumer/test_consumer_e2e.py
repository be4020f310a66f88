"""The consumer end to end: real RabbitMQ, the real private API (uvicorn), the real docker engine."""

from __future__ import annotations

import io
import json
import signal
import stat
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import docker
import pika
import pytest

from common.messages import CPU_QUEUE, GPU_QUEUE, encode
from tests.consumer.conftest import (
    PrivateApi,
    RunningWorker,
    queue_length,
    start_consumer_process,
    task_leftovers,
    wait_until,
)
from tests.consumer.helpers import zip_bytes

pytestmark = pytest.mark.docker

StartWorker = Callable[..., RunningWorker]


def test_task_runs_and_output_comes_back(
    private_api: PrivateApi, start_worker: StartWorker, model_images, consumer_docker, tmp_path
):
    """A task's input goes in, the nested output tree comes back as a zip, logs are stored, nothing is left."""
    model = private_api.add_model(model_images["copy"])
    uid = private_api.submit(
        model["human_readable_id"], zip_bytes({"ct/slice-001.dcm": b"x" * 5000, "meta.json": b"{}"})
    )
    worker = start_worker()
    status = private_api.wait(uid, {"finished", "failed"})
    assert status["status"] == "finished", status
    assert status["attempt"] == 1 and status["exit_code"] == 0
    assert status["consumer_id"] == worker.worker.api.instance_id
    response = private_api.http.get(f"/api/tasks/{uid}")
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = set(archive.namelist())
        assert archive.read("nested/deeper/ct/slice-001.dcm") == b"x" * 5000
        assert "empty/" in names
        assert stat.S_IMODE(archive.getinfo("run-me.sh").external_attr >> 16) == 0o750
    assert "copied 2 entries" in private_api.http.get(f"/api/tasks/{uid}/logs").text
    # The cleanup runs right after the final state is stored (and the message acked), not before.
    wait_until(lambda: not task_leftovers(consumer_docker, uid), 15, "the task's container to go")
    wait_until(lambda: not list(tmp_path.rglob(f"{uid}-1")), 15, "the task's folders to go")
    (result,) = worker.worker.results
    assert result.outcome == "finished" and set(result.phases) == {"provision", "run", "collect", "cleanup"}


def test_failures_users_understand(private_api: PrivateApi, start_worker: StartWorker, model_images):
    """Exit code with log tail, timeout, out of memory, missing image: each fails with a clear reason."""
    failing = private_api.add_model(model_images["exit3"])
    sleeping = private_api.add_model(model_images["sleep"], timeout=2)
    hungry = private_api.add_model(model_images["oom"], mem_limit="32m")
    missing = private_api.add_model("inference-server-test/consumer-not-built:nope")
    data = zip_bytes({"a.txt": b"a"})
    uids = {
        name: private_api.submit(m["human_readable_id"], data)
        for name, m in {"exit3": failing, "sleep": sleeping, "oom": hungry, "missing": missing}.items()
    }
    start_worker()
    results = {name: private_api.wait(uid, {"finished", "failed"}) for name, uid in uids.items()}
    assert all(r["status"] == "failed" for r in results.values()), results
    assert results["exit3"]["exit_code"] == 3
    assert "exited with code 3" in results["exit3"]["error"]
    assert "no DICOM series found" in results["exit3"]["error"]
    assert results["sleep"]["error"] == "timed out after 2 s"
    assert results["oom"]["error"] == "killed: out of memory (limit 32m)"
    assert "not on this host" in results["missing"]["error"]
    answer = private_api.http.get(f"/api/tasks/{uids['exit3']}")
    assert answer.status_code == 552
    assert "no DICOM series found" in answer.json()["log_tail"]


def test_model_content_is_mounted_at_model(
    private_api: PrivateApi, start_worker: StartWorker, model_images, consumer_docker
):
    """The model zip is unpacked once into a kept folder under WORK_DIR and read by the model at /model."""
    model = private_api.add_model(model_images["read_model"], zip_file=zip_bytes({"weights.txt": b"w-123"}))
    uid = private_api.submit(model["human_readable_id"], zip_bytes({"a": b"b"}))
    worker = start_worker()
    assert private_api.wait(uid, {"finished", "failed"})["status"] == "finished"
    with zipfile.ZipFile(io.BytesIO(private_api.http.get(f"/api/tasks/{uid}").content)) as archive:
        assert archive.read("weights-seen.txt") == b"w-123"
    kept = worker.worker.runner.workspace.models_root / f"{model['human_readable_id']}-{model['zip_sha256'][:16]}"
    assert (kept / "weights.txt").read_bytes() == b"w-123", "the model content is kept for later tasks"


def test_cancel_stops_the_container_within_seconds(
    private_api: PrivateApi, start_worker: StartWorker, model_images, consumer_docker
):
    """Deleting a running task stops its container within a few seconds and removes it."""
    model = private_api.add_model(model_images["sleep"], timeout=120)
    uid = private_api.submit(model["human_readable_id"], zip_bytes({"a": b"b"}))
    start_worker()
    private_api.wait(uid, {"running"})
    label = {"label": f"inference-server.task={uid}", "status": "running"}
    wait_until(
        lambda: bool(consumer_docker.containers.list(sparse=True, filters=label)), 30, "the model container to run"
    )
    assert private_api.http.delete(f"/api/tasks/{uid}").status_code == 200
    cancelled = time.monotonic()
    wait_until(lambda: not task_leftovers(consumer_docker, uid), 15, "the task's container to go")
    assert time.monotonic() - cancelled < 15


def test_redelivered_message_of_a_finished_task_is_skipped(
    private_api: PrivateApi, start_worker: StartWorker, model_images, amqp_url
):
    """A message for a task that already finished is acknowledged and the task is not run again."""
    model = private_api.add_model(model_images["copy"])
    uid = private_api.submit(model["human_readable_id"], zip_bytes({"a": b"b"}))
    worker = start_worker()
    assert private_api.wait(uid, {"finished", "failed"})["status"] == "finished"
    # Read before publishing: the consumer may take the message before this line would run after it.
    handled = worker.worker.processed
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    connection.channel().basic_publish("", CPU_QUEUE, encode(uid), pika.BasicProperties(delivery_mode=2))
    connection.close()
    wait_until(lambda: worker.worker.processed > handled and queue_length(amqp_url, CPU_QUEUE) == 0, 30, "the skip")
    worker.stop()
    status = private_api.status(uid)
    assert status["status"] == "finished" and status["attempt"] == 1


def test_cpu_consumer_never_takes_a_gpu_task(
    private_api: PrivateApi, start_worker: StartWorker, model_images, amqp_url
):
    """A GPU model's task waits in the GPU queue; a consumer without GPU_DEVICE leaves it alone."""
    gpu_model = private_api.add_model(model_images["copy"], use_gpu=True)
    cpu_model = private_api.add_model(model_images["copy"])
    gpu_uid = private_api.submit(gpu_model["human_readable_id"], zip_bytes({"a": b"b"}))
    cpu_uid = private_api.submit(cpu_model["human_readable_id"], zip_bytes({"a": b"b"}))
    start_worker()
    assert private_api.wait(cpu_uid, {"finished", "failed"})["status"] == "finished"
    assert private_api.status(gpu_uid)["status"] == "pending"
    assert queue_length(amqp_url, GPU_QUEUE) == 1


def test_two_consumers_share_a_queue_without_running_a_task_twice(
    private_api: PrivateApi, start_worker: StartWorker, model_images
):
    """Eight one-second tasks on two consumers: every task runs once (attempt 1), both consumers work."""
    model = private_api.add_model(model_images["sleep1"])
    uids = [private_api.submit(model["human_readable_id"], zip_bytes({"i": str(i).encode()})) for i in range(8)]
    first, second = start_worker(), start_worker()
    results = [private_api.wait(uid, {"finished", "failed"}, timeout=120) for uid in uids]
    assert all(r["status"] == "finished" and r["attempt"] == 1 for r in results), results
    assert {r["consumer_id"] for r in results} == {first.worker.api.instance_id, second.worker.api.instance_id}


def _consumer_process(
    api: PrivateApi, amqp_url: str, consumer_id: str, tmp_path: Path, **extra: str
) -> subprocess.Popen[bytes]:
    """`python -m job_consumer` as its own process."""
    return start_consumer_process(api, amqp_url, consumer_id, tmp_path, **extra)[0]


def test_kill_9_mid_task_then_the_task_completes_once(
    private_api: PrivateApi, model_images, amqp_url, consumer_docker: docker.DockerClient, tmp_path, consumer_id
):
    """kill -9 mid-task: the lease runs out, the task runs again (attempt 2) and the orphan container is reaped."""
    model = private_api.add_model(model_images["slow"])
    uid = private_api.submit(model["human_readable_id"], zip_bytes({"a": b"b"}))
    first = _consumer_process(private_api, amqp_url, consumer_id, tmp_path)
    try:
        label = {"label": f"inference-server.task={uid}", "status": "running"}
        wait_until(
            lambda: bool(consumer_docker.containers.list(sparse=True, filters=label)), 60, "the model container to run"
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert task_leftovers(consumer_docker, uid), "a killed consumer leaves its task's container behind"
        second = _consumer_process(private_api, amqp_url, consumer_id, tmp_path)
        try:
            status = private_api.wait(uid, {"finished", "failed"}, timeout=120)
            assert status["status"] == "finished" and status["attempt"] == 2, status
            wait_until(lambda: not task_leftovers(consumer_docker, uid), 20, "the leftovers to go")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0
    finally:
        if first.poll() is None:
            first.kill()


def test_sigterm_requeues_a_task_that_outlives_the_grace_period(
    private_api: PrivateApi, model_images, amqp_url, consumer_docker: docker.DockerClient, tmp_path, consumer_id
):
    """SIGTERM with a 1 s grace period: the container is stopped, the task is released (pending) and published again."""
    model = private_api.add_model(model_images["sleep"], timeout=300)
    uid = private_api.submit(model["human_readable_id"], zip_bytes({"a": b"b"}))
    process = _consumer_process(private_api, amqp_url, consumer_id, tmp_path, SHUTDOWN_GRACE_SECONDS="1")
    try:
        label = {"label": f"inference-server.task={uid}", "status": "running"}
        wait_until(
            lambda: bool(consumer_docker.containers.list(sparse=True, filters=label)), 60, "the model container to run"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(40) == 0
        assert task_leftovers(consumer_docker, uid) == []
        status = private_api.status(uid)
        assert status["status"] == "pending", status
        assert status["attempt"] == 0, status
        wait_until(lambda: queue_length(amqp_url, CPU_QUEUE) == 1, 15, "the released task to be published again")
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_lets_a_short_task_finish(
    private_api: PrivateApi, model_images, amqp_url, consumer_docker: docker.DockerClient, tmp_path, consumer_id
):
    """SIGTERM within the grace period: the running task finishes and is stored before the consumer exits."""
    model = private_api.add_model(model_images["slow"])
    uid = private_api.submit(model["human_readable_id"], zip_bytes({"a": b"b"}))
    process = _consumer_process(private_api, amqp_url, consumer_id, tmp_path, SHUTDOWN_GRACE_SECONDS="60")
    try:
        label = {"label": f"inference-server.task={uid}", "status": "running"}
        wait_until(
            lambda: bool(consumer_docker.containers.list(sparse=True, filters=label)), 60, "the model container to run"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        status = private_api.status(uid)
        assert status["status"] == "finished", status
        assert json.loads(private_api.http.get(f"/api/tasks/{uid}/status").content)["attempt"] == 1
        assert not list((tmp_path / consumer_id / "tasks").glob("*/*")), "a clean exit leaves no instance folder"
    finally:
        if process.poll() is None:
            process.kill()


def test_output_past_max_output_size_fails_with_a_clear_reason(
    private_api: PrivateApi, start_worker: StartWorker, model_images, consumer_docker
):
    """A model writing more than its max_output_size fails while the zip is written; nothing is stored."""
    model = private_api.add_model(model_images["big_output"], max_output_size="4m")
    assert model["max_output_size"] == "4m", model
    uid = private_api.submit(model["human_readable_id"], zip_bytes({"a": b"b"}))
    start_worker()
    status = private_api.wait(uid, {"finished", "failed"}, timeout=120)
    assert status["status"] == "failed" and "max_output_size" in status["error"], status
    assert private_api.http.get(f"/api/tasks/{uid}").status_code == 552
    wait_until(lambda: not task_leftovers(consumer_docker, uid), 15, "the task's container to go")
