"""Unit tests of the consumer's pure parts: sandbox policy, settings, failure reasons, the private API client."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest
from docker.types import DeviceRequest
from pydantic import ValidationError

from job_consumer.broker import queues_for
from job_consumer.config import load_settings
from job_consumer.containers import Engine, RunResult, gpu_error
from job_consumer.errors import DockerUnavailable, GpuUnusable, LeaseLost, ModelFailed, PrivateApiError
from job_consumer.outputs import OutputTooLarge, folder_to_zip
from job_consumer.private_api import ClaimOutcome, PrivateApiClient
from job_consumer.sandbox import Sandbox, TaskRef, model_container_kwargs, scope_of
from job_consumer.schemas import parse_size
from job_consumer.task_runner import failure_reason
from tests.consumer.helpers import make_model, mock_api

TOKEN = "unit-test-token-0123456789abcdef"


TASK = TaskRef("uid-1", 2, "host-gpu1-0123456789ab", "host-gpu1", "scope123", 1_900_000_000)


def _kwargs(**overrides):
    """Sandbox kwargs for a model with overrides, on a consumer with GPU 1 unless told otherwise."""
    gpu = overrides.pop("gpu_device", "1")
    return model_container_kwargs(
        model=make_model("img:1", **overrides),
        task=TASK,
        input_dir=Path("/w/in"),
        output_dir=Path("/w/out"),
        model_dir=Path("/w/model"),
        sandbox=Sandbox(gpu_device=gpu, pids_limit=512, max_log_bytes=4096),
    )


def test_sandbox_policy_locks_the_container_down():
    """No network, no capabilities, no-new-privileges, limits, init, non-root, read-only /input and /model, labels."""
    kwargs = _kwargs(mem_limit="2g", shm_size="512m", cpus=1.5)
    assert kwargs["network_mode"] == "none"
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["pids_limit"] == 512 and kwargs["init"] is True
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == "2g" and kwargs["shm_size"] == "512m"
    assert kwargs["nano_cpus"] == 1_500_000_000
    assert kwargs["user"] == "65534:65534"
    assert {(m["Target"], m["Source"], m["Type"], m["ReadOnly"]) for m in kwargs["mounts"]} == {
        ("/input", "/w/in", "bind", True),
        ("/output", "/w/out", "bind", False),
        ("/model", "/w/model", "bind", True),
    }
    assert {(u["Name"], u["Soft"], u["Hard"]) for u in kwargs["ulimits"]} == {("core", 0, 0), ("nofile", 8192, 8192)}
    assert "size=1g" in kwargs["tmpfs"]["/tmp"]
    labels = kwargs["labels"]
    assert labels["inference-server.task"] == "uid-1"
    assert labels["inference-server.instance"] == "host-gpu1-0123456789ab"
    assert labels["inference-server.consumer"] == "host-gpu1"
    assert labels["inference-server.attempt"] == "2" and labels["inference-server.deadline"] == "1900000000"
    assert labels["inference-server.scope"] == "scope123"
    assert "device_requests" not in kwargs
    assert kwargs["environment"] == {
        "NVIDIA_VISIBLE_DEVICES": "void",
        "HOME": "/tmp",
        "PROGRESS_FILE": "/output/.progress",
    }
    assert "volumes" not in kwargs
    assert _kwargs(user="1000:1000")["user"] == "1000:1000"
    url = "http://private-api:7000"
    assert scope_of(url) == scope_of(url) != scope_of("http://other")
    assert scope_of(url, "project-a") != scope_of(url, "project-b") != scope_of(url)


def test_network_only_when_the_model_asks():
    """`network: true` gives the default bridge."""
    assert _kwargs(network=True)["network_mode"] == "bridge"


@pytest.mark.parametrize("device", ["0", "3", "GPU-8f6a1c2e-1b2c-4d5e-9f00-0123456789ab"])
def test_gpu_model_gets_exactly_its_gpu(device):
    """A GPU model gets one device request for exactly GPU_DEVICE (index or UUID) and sees only that one."""
    kwargs = _kwargs(use_gpu=True, gpu_device=device)
    (request,) = kwargs["device_requests"]
    assert isinstance(request, DeviceRequest)
    assert request["DeviceIDs"] == [device] and request["Capabilities"] == [["gpu"]]
    assert request.get("Count") in (None, 0)
    assert kwargs["environment"]["NVIDIA_VISIBLE_DEVICES"] == device


def test_gpu_model_is_refused_without_a_gpu():
    """A consumer without GPU_DEVICE never builds a GPU container; it listens only on the CPU queue."""
    with pytest.raises(ValueError, match="needs a GPU"):
        _kwargs(use_gpu=True, gpu_device=None)
    assert queues_for(has_gpu=False) == ["inference.tasks.cpu"]
    assert set(queues_for(has_gpu=True)) == {"inference.tasks.cpu", "inference.tasks.gpu"}


def test_gpu_errors_are_recognised():
    """The engine's words for an unusable GPU are told from the model's own failures."""
    assert gpu_error('could not select device driver "" with capabilities: [[gpu]]')
    assert gpu_error("nvidia-container-cli: initialization error: nvml error: driver not loaded")
    assert not gpu_error('exec: "python": executable file not found in $PATH')


def test_settings_defaults_and_bad_values(monkeypatch):
    """CONSUMER_ID defaults to host + GPU; an empty GPU_DEVICE means none; bad URLs and tokens are refused."""
    monkeypatch.setenv("INTERNAL_TOKEN", TOKEN)
    monkeypatch.setenv("RABBITMQ_URL", "amqp://u:a-random-broker-password@mq:5672/%2F")
    monkeypatch.setenv("GPU_DEVICE", "")
    assert load_settings().gpu_device is None
    assert load_settings().consumer_id.endswith("-cpu")
    monkeypatch.setenv("GPU_DEVICE", "2")
    assert load_settings().consumer_id.endswith("-gpu2")
    monkeypatch.setenv("RABBITMQ_URL", "http://mq")
    with pytest.raises(ValidationError, match="amqp"):
        load_settings()
    monkeypatch.setenv("RABBITMQ_URL", "amqp://mq")
    monkeypatch.setenv("INTERNAL_TOKEN", "change-me")
    with pytest.raises(ValidationError, match="INTERNAL_TOKEN"):
        load_settings()


def test_sizes():
    """Docker size strings as the private API sends them."""
    assert parse_size("50g") == 50 * 1024**3 and parse_size("512m") == 512 * 1024**2 and parse_size(7) == 7
    assert make_model("img", max_output_size="1k").max_output_bytes == 1024
    assert make_model("img").max_output_bytes is None
    with pytest.raises(ValueError):
        parse_size("lots")


def test_failure_reasons_users_understand():
    """Timeout, out of memory (flag or 137), a bus error (shm), exit code with log tail, success."""
    model = make_model("img", timeout=5, mem_limit="1g", shm_size="64m")
    assert failure_reason(model, RunResult("c", 137, timed_out=True)) == "timed out after 5 s"
    assert failure_reason(model, RunResult("c", 137)) == "killed: out of memory (limit 1g)"
    assert failure_reason(model, RunResult("c", 1, oom_killed=True)) == "killed: out of memory (limit 1g)"
    shm = failure_reason(model, RunResult("c", 135))
    assert shm is not None and "shm_size" in shm and "64m" in shm
    reason = failure_reason(model, RunResult("c", 3, log_tail=b"line\nbad input\n"))
    assert reason is not None and reason.startswith("exited with code 3") and "bad input" in reason
    assert failure_reason(model, RunResult("c", 0)) is None


def _client(handler, retry_seconds: float = 0.0) -> PrivateApiClient:
    """A client whose HTTP goes to handler."""
    return mock_api(handler, "c1-0123456789ab", retry_seconds=retry_seconds)


def _claim_answer(status_code: int, body: dict) -> PrivateApiClient:
    """A client whose calls answer status_code with body."""
    return _client(lambda request: httpx.Response(status_code, json=body))


def test_claim_outcomes():
    """200 runs; 409 (final, running elsewhere, not due) and 404 drop the message; 5xx and 401 are errors."""
    model = {"id": 1, "human_readable_id": "m", "container_tag": "img", "use_gpu": False}
    ok = _claim_answer(200, {"task": {"uid": "u" * 22, "status": "running", "attempt": 2}, "model": model})
    result = ok.claim("u" * 22)
    assert result.outcome is ClaimOutcome.RUN and result.claim and result.claim.task.attempt == 2
    for status in ("finished", "failed", "cancelled", "running", "pending"):
        assert _claim_answer(409, {"detail": "x", "status": status}).claim("u").outcome is ClaimOutcome.SKIP
    assert _claim_answer(404, {"detail": "no task"}).claim("u").outcome is ClaimOutcome.SKIP
    with pytest.raises(PrivateApiError):
        _claim_answer(503, {"detail": "db down"}).claim("u")
    with pytest.raises(PrivateApiError, match="INTERNAL_TOKEN"):
        _claim_answer(401, {"detail": "bad token"}).claim("u")


def test_every_task_call_names_the_instance_and_attempt():
    """claim sends instance and name; heartbeat, finish, release the instance and attempt; uploads as query."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.headers["X-Internal-Token"] == "mock-token-0123456789abcdef"
        return httpx.Response(200, json={"status": "running"})

    client = _client(handler)
    client.heartbeat("u", 2)
    client.finish("u", 2, status="failed", reason="r", exit_code=3)
    client.release("u", 2, reason="gpu", infrastructure=True)
    client.upload_logs("u", 2, b"log")
    bodies = [json.loads(r.content) for r in seen[:3]]
    assert bodies[0] == {"consumer_id": "c1-0123456789ab", "attempt": 2}
    assert bodies[1] == {
        "consumer_id": "c1-0123456789ab",
        "attempt": 2,
        "status": "failed",
        "reason": "r",
        "exit_code": 3,
    }
    assert bodies[2] == {"consumer_id": "c1-0123456789ab", "attempt": 2, "reason": "gpu", "infrastructure": True}
    assert dict(seen[3].url.params) == {"consumer_id": "c1-0123456789ab", "attempt": "2"}
    claims: list[dict] = []

    def claim_handler(request: httpx.Request) -> httpx.Response:
        claims.append(json.loads(request.content))
        return httpx.Response(404, json={"detail": "x"})

    _client(claim_handler).claim("u")
    assert claims == [{"consumer_id": "c1-0123456789ab", "consumer_name": "c1"}]


def test_heartbeat_and_finish_see_a_lost_lease():
    """Heartbeat: cancelled, 404 and 409 mean stop; finish and release: 409 means not ours (False)."""
    stale = _claim_answer(409, {"detail": "not held", "status": "running"})
    with pytest.raises(LeaseLost):
        stale.heartbeat("u", 1)
    with pytest.raises(LeaseLost, match="cancelled"):
        _claim_answer(200, {"status": "cancelled"}).heartbeat("u", 1)
    assert _claim_answer(200, {"status": "running"}).heartbeat("u", 1) == "running"
    assert stale.finish("u", 1, status="failed", reason="r", exit_code=3) is False
    assert stale.release("u", 1, reason="r", infrastructure=False) is False
    with pytest.raises(ValueError):
        stale.finish("u", 1, status="cancelled", reason=None, exit_code=None)


def test_task_calls_retry_through_a_private_api_restart(tmp_path: Path):
    """Connection errors and 5xx are retried within the window; the output is sent again from the file."""
    answers = iter([0, 502, 503, 200])
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if answer == 0:
            raise httpx.ConnectError("connection refused")
        bodies.append(request.read())
        return httpx.Response(answer, json={"detail": "restarting"} if answer != 200 else {"size": 3})

    output = tmp_path / "out.zip"
    output.write_bytes(b"zip")
    _client(handler, retry_seconds=30).upload_output("u", 1, output)
    assert bodies == [b"zip", b"zip", b"zip"]
    with pytest.raises(PrivateApiError):
        _client(lambda r: httpx.Response(503, json={"detail": "down"}), retry_seconds=0.5).finish(
            "u", 1, status="finished", reason=None, exit_code=0
        )


def test_output_past_the_limit_is_a_model_failure(tmp_path: Path):
    """413 from the private API fails the task with a reason naming max_output_size."""
    output = tmp_path / "out.zip"
    output.write_bytes(b"zip")
    with pytest.raises(ModelFailed, match="max_output_size"):
        _claim_answer(413, {"detail": "too large"}).upload_output("u", 1, output)


def test_contract_routes_an_older_private_api_lacks():
    """A private API without the lease check or consumer routes answers FastAPI's 404: None, not an error."""
    missing = _claim_answer(404, {"detail": "Not Found"})
    assert missing.leases_check([("u", "c", 1)]) is None
    assert missing.consumer_heartbeat({"queues": []}) is None
    assert _claim_answer(200, {"live": [True, False]}).leases_check([("u", "c", 1), ("v", "c", 1)]) == [True, False]


def test_model_zip_sha256_is_checked(tmp_path: Path):
    """A model zip whose bytes do not match the expected sha256 is refused (retry later)."""
    client = _client(lambda request: httpx.Response(200, content=b"zipbytes", headers={"X-Zip-Sha256": "ab"}))
    with pytest.raises(PrivateApiError, match="changed"):
        client.download_model_zip("m", tmp_path / "m.zip", expected_sha256="0" * 64)


def test_folder_to_zip_keeps_the_tree_and_never_follows_links(tmp_path: Path):
    """A bind-mounted /output is zipped like the engine's archive; links and fifos are left out, never followed."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd").write_text("root:x:0:0")
    out = tmp_path / "output"
    (out / "a" / "b").mkdir(parents=True)
    (out / "empty").mkdir()
    (out / "a" / "b" / "f.bin").write_bytes(b"\x01" * 2_000_000)
    (out / "run.sh").write_text("#!/bin/sh\n")
    (out / "run.sh").chmod(0o750)
    (out / "link-to-file").symlink_to(secret / "passwd")
    (out / "link-to-dir").symlink_to(secret)
    os.mkfifo(out / "a" / "pipe")
    summary = folder_to_zip(out, tmp_path / "out.zip")
    assert summary.files == 2 and summary.bytes == 2_000_010
    assert sorted(summary.skipped) == ["a/pipe", "link-to-dir", "link-to-file"]
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        infos = {info.filename: info for info in archive.infolist()}
        assert set(infos) == {"a/", "a/b/", "a/b/f.bin", "empty/", "run.sh"}
        assert archive.read("a/b/f.bin") == b"\x01" * 2_000_000
        assert stat.S_IMODE(infos["run.sh"].external_attr >> 16) == 0o750
        assert infos["empty/"].is_dir()


def test_output_zip_is_bounded_while_it_is_written(tmp_path: Path):
    """Past max_bytes the zip stops at once and is removed; under it, it is complete."""
    out = tmp_path / "output"
    out.mkdir()
    (out / "big.bin").write_bytes(os.urandom(3_000_000))
    with pytest.raises(OutputTooLarge, match="max_output_size"):
        folder_to_zip(out, tmp_path / "out.zip", max_bytes=1_000_000)
    assert not (tmp_path / "out.zip").exists()
    assert folder_to_zip(out, tmp_path / "out.zip", max_bytes=4_000_000).files == 1
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.testzip() is None


class _RefusingContainer:
    """A container whose start fails with the engine's message."""

    def __init__(self, message: str, status: int = 500) -> None:
        self.message, self.status = message, status

    def start(self) -> None:
        response = httpx.Response(self.status)
        raise docker.errors.APIError("start failed", response=response, explanation=self.message)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("OCI runtime create failed: write /sys/fs/cgroup/x: no space left on device", DockerUnavailable),
        ('error mounting "/work/tasks/x/input" to rootfs at "/input"', DockerUnavailable),
        ('OCI runtime create failed: exec: "/run.sh": executable file not found in $PATH', ModelFailed),
        ('could not select device driver "" with capabilities: [[gpu]]', GpuUnusable),
        ('exec: "/opt/nvidia/nvidia_entrypoint.sh": exec format error', ModelFailed),
    ],
)
def test_start_errors_of_the_host_are_not_the_models(message: str, error: type[Exception]) -> None:
    """A full disk, cgroups or a mount the engine cannot make are retried elsewhere; a bad entrypoint fails the task."""
    engine = Engine(docker.DockerClient.__new__(docker.DockerClient))
    with pytest.raises(error):
        engine.start(_RefusingContainer(message))
