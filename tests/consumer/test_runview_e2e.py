"""Run view end to end (real RabbitMQ, private API, consumer, docker): phases, the progress file, provenance."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from job_consumer.containers import Engine
from job_consumer.sandbox import Sandbox
from job_consumer.schemas import Claim, TaskInfo
from job_consumer.task_runner import TaskControl, TaskRunner
from job_consumer.workspace import Workspace
from tests.consumer.conftest import PrivateApi, RunningWorker, remove_instance_containers
from tests.consumer.helpers import make_model, mock_api, zip_bytes

pytestmark = pytest.mark.docker

StartWorker = Callable[..., RunningWorker]


def _watch(api: PrivateApi, uid: str, until: Callable[[dict[str, Any]], bool], timeout: float = 90) -> list[dict]:
    """Every status seen (polled every 0.1 s) until `until` holds; the last one is the one that did."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not seen or not until(seen[-1]):
        if time.monotonic() > deadline:
            raise AssertionError(f"task {uid}: not there after {timeout} s; last status {seen[-1:]}")
        seen.append(api.status(uid))
        time.sleep(0.1)
    return seen


def _ended(status: dict[str, Any]) -> bool:
    return status["status"] in ("finished", "failed", "cancelled")


def test_progress_shows_while_the_model_runs_and_never_in_its_output(
    private_api: PrivateApi,
    start_worker: StartWorker,
    model_images: dict[str, str],
    consumer_docker: docker.DockerClient,
) -> None:
    """The model's $PROGRESS_FILE reaches the status while it runs; the output zip holds only its results."""
    model = private_api.add_model(model_images["progress"])
    data = zip_bytes({"case/ct.nii": b"x" * 1000})
    uid = private_api.submit(model["human_readable_id"], data)
    assert private_api.status(uid)["phase"] == "queued"
    worker = start_worker()
    seen = _watch(private_api, uid, _ended)
    final = seen[-1]
    assert final["status"] == "finished", final
    running = {(s["phase"], s["progress"], s["progress_message"]) for s in seen if s["status"] == "running"}
    assert running & {("running", 0.25, "reading input"), ("running", 0.5, "segmenting")}, running
    assert final["progress"] == 1.0 and final["progress_message"] == "done", "the last line, read as it ended"
    assert final["phase"] is None
    output = private_api.http.get(f"/api/tasks/{uid}")
    assert output.status_code == 200
    with zipfile.ZipFile(io.BytesIO(output.content)) as archive:
        assert archive.namelist() == ["result.txt"], "the progress file is not part of the output"
    assert "progress file: /output/.progress" in private_api.http.get(f"/api/tasks/{uid}/logs").text

    provenance = final["provenance"]
    assert provenance["image"]["id"] == consumer_docker.images.get(model_images["progress"]).id
    assert provenance["image"]["tag"] == model_images["progress"]
    assert provenance["input_sha256"] == hashlib.sha256(data).hexdigest()
    assert provenance["output_sha256"] == hashlib.sha256(output.content).hexdigest()
    assert provenance["model"]["human_readable_id"] == model["human_readable_id"]
    assert provenance["model"]["zip_sha256"] is None
    assert provenance["consumer"]["instance_id"] == worker.worker.api.instance_id
    assert provenance["consumer"]["name"] == worker.worker.api.consumer_name
    assert provenance["consumer"]["host"] == consumer_docker.info()["Name"]
    assert provenance["exit_code"] == 0 and provenance["attempt"] == 1 and provenance["gpu"] is None
    limits = provenance["limits"]
    assert limits["mem_limit"] == "128m" and limits["memory_bytes"] == 128 * 1024**2
    assert limits["shm_size"] == "64m" and limits["network"] == "none" and limits["user"] == "65534:65534"
    assert limits["timeout"] == 60 and limits["pids_limit"] == 4096
    timings = provenance["timings"]
    assert list(timings) == ["queued", "preparing", "running", "uploading"]
    assert timings["running"]["seconds"] >= 5, "the model works two steps of 3 s"


def test_provenance_names_the_image_that_ran_when_its_tag_moves_meanwhile(
    private_api: PrivateApi,
    start_worker: StartWorker,
    model_images: dict[str, str],
    consumer_docker: docker.DockerClient,
) -> None:
    """The image is resolved once per task and run by id: re-tagging it during the task changes nothing."""
    tag = f"inference-server-test/runview-retag:{secrets.token_hex(6)}"
    ran = consumer_docker.images.get(model_images["progress"])
    other = consumer_docker.images.get(model_images["trivial"])
    assert ran.id != other.id
    ran.tag(tag)
    try:
        model = private_api.add_model(tag)
        uid = private_api.submit(model["human_readable_id"], zip_bytes({"a.txt": b"a"}))
        start_worker()
        _watch(private_api, uid, lambda s: s["phase"] == "running" or _ended(s))
        other.tag(tag)  # the tag names another image now, while the task runs
        assert consumer_docker.images.get(tag).id == other.id
        final = _watch(private_api, uid, _ended)[-1]
        assert final["status"] == "finished", final
        assert final["provenance"]["image"] == {"tag": tag, "id": ran.id, "repo_digests": []}
        with zipfile.ZipFile(io.BytesIO(private_api.http.get(f"/api/tasks/{uid}").content)) as archive:
            assert archive.read("result.txt") == b"from the progress model\n"
    finally:
        consumer_docker.images.remove(tag)  # only the tag: both images keep their own


def test_the_container_is_created_from_the_image_resolved_at_the_start(
    consumer_docker: docker.DockerClient, model_images: dict[str, str], tmp_path: Path
) -> None:
    """A re-tag between resolving the image and creating the container (here: while the input downloads) does not
    change what runs: the container is created by image id."""
    tag = f"inference-server-test/runview-retag:{secrets.token_hex(6)}"
    ran = consumer_docker.images.get(model_images["progress"])
    other = consumer_docker.images.get(model_images["trivial"])
    calls: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/input"):
            other.tag(tag)  # after the image was resolved, before the container is created
            return httpx.Response(200, content=zip_bytes({"a.txt": b"a"}))
        if path.endswith("/output"):
            calls["output"] = request.read()
        if path.endswith("/finish"):
            calls["finish"] = json.loads(request.content)
        return httpx.Response(200, json={"status": "running"})

    instance = f"retag-{secrets.token_hex(6)}"
    runner = TaskRunner(
        api=mock_api(handler, instance),
        engine=Engine(consumer_docker, pull_missing_images=False),
        workspace=Workspace(tmp_path / "work", instance_id=instance),
        sandbox=Sandbox(gpu_device=None),
        scope="test-runview-retag",
        heartbeat_seconds=1,
    )
    claim = Claim(
        task=TaskInfo(uid=f"retag-{secrets.token_hex(10)}", status="running", attempt=1),
        model=make_model(tag, timeout=60),
    )
    ran.tag(tag)
    try:
        result = runner.run(claim, TaskControl())
    finally:
        consumer_docker.images.remove(tag)
        remove_instance_containers(consumer_docker, instance)
    assert result.outcome == "finished"
    assert list(result.timings) == ["preparing", "running", "uploading"]  # no queued: the claim has no timestamps
    with zipfile.ZipFile(io.BytesIO(calls["output"])) as archive:
        assert archive.namelist() == ["result.txt"], "the progress model ran, not the image the tag names now"
    provenance = calls["finish"]["provenance"]
    assert provenance["image"]["id"] == ran.id and provenance["exit_code"] == 0
