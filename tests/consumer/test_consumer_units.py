"""Fast unit checks of the consumer's pure parts: sandbox policy, settings, reasons, the API client, tar to zip."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from docker.types import DeviceRequest
from pydantic import ValidationError

from job_consumer.broker import queues_for
from job_consumer.config import load_settings
from job_consumer.docker_executor import RunResult
from job_consumer.errors import LeaseLost, PrivateApiError
from job_consumer.private_api import ClaimOutcome, PrivateApiClient
from job_consumer.sandbox import model_container_kwargs
from job_consumer.tar_stream import folder_as_tar, folder_to_zip, tar_to_zip
from job_consumer.timing import StepTimes, step, timing_task
from job_consumer.worker import failure_reason
from tests.consumer.helpers import make_model

TOKEN = "unit-test-token-0123456789abcdef"


def _kwargs(**overrides):
    """Sandbox kwargs for a model with overrides, on a consumer with GPU 1 unless told otherwise."""
    gpu = overrides.pop("gpu_device", "1")
    return model_container_kwargs(
        model=make_model("img:1", **overrides),
        task_uid="uid-1",
        consumer_id="host-gpu1",
        input_volume="vin",
        output_volume="vout",
        model_volume="vmodel",
        gpu_device=gpu,
        pids_limit=512,
        max_log_bytes=4096,
    )


def test_sandbox_policy_locks_the_container_down():
    """No network, no capabilities, no-new-privileges, limits, init, read-only /input and /model, labels."""
    kwargs = _kwargs(mem_limit="2g", shm_size="512m", cpus=1.5)
    assert kwargs["network_mode"] == "none"
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["pids_limit"] == 512 and kwargs["init"] is True
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == "2g" and kwargs["shm_size"] == "512m"
    assert kwargs["nano_cpus"] == 1_500_000_000
    assert kwargs["volumes"] == {
        "vin": {"bind": "/input", "mode": "ro"},
        "vout": {"bind": "/output", "mode": "rw"},
        "vmodel": {"bind": "/model", "mode": "ro"},
    }
    assert kwargs["labels"]["inference-server.task"] == "uid-1"
    assert kwargs["labels"]["inference-server.consumer"] == "host-gpu1"
    assert "device_requests" not in kwargs


def test_network_only_when_the_model_asks():
    """`network: true` gives the default bridge."""
    assert _kwargs(network=True)["network_mode"] == "bridge"


@pytest.mark.parametrize("device", ["0", "3", "GPU-8f6a1c2e-1b2c-4d5e-9f00-0123456789ab"])
def test_gpu_model_gets_exactly_its_gpu(device):
    """A GPU model gets one device request for exactly GPU_DEVICE (index or UUID) with the gpu capability."""
    kwargs = _kwargs(use_gpu=True, gpu_device=device)
    (request,) = kwargs["device_requests"]
    assert isinstance(request, DeviceRequest)
    assert request["DeviceIDs"] == [device] and request["Capabilities"] == [["gpu"]]
    assert request.get("Count") in (None, 0)


def test_gpu_model_is_refused_without_a_gpu():
    """A consumer without GPU_DEVICE never builds a GPU container; it listens only on the CPU queue."""
    with pytest.raises(ValueError, match="needs a GPU"):
        _kwargs(use_gpu=True, gpu_device=None)
    assert queues_for(has_gpu=False) == ["inference.tasks.cpu"]
    assert set(queues_for(has_gpu=True)) == {"inference.tasks.cpu", "inference.tasks.gpu"}


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


def test_failure_reasons_users_understand():
    """Timeout, out of memory (flag or 137), exit code with log tail, success."""
    model = make_model("img", timeout=5, mem_limit="1g")
    assert failure_reason(model, RunResult("c", 137, timed_out=True)) == "timed out after 5 s"
    assert failure_reason(model, RunResult("c", 137)) == "killed: out of memory (limit 1g)"
    assert failure_reason(model, RunResult("c", 1, oom_killed=True)) == "killed: out of memory (limit 1g)"
    reason = failure_reason(model, RunResult("c", 3, log_tail=b"line\nbad input\n"))
    assert reason is not None and reason.startswith("exited with code 3") and "bad input" in reason
    assert failure_reason(model, RunResult("c", 0)) is None


def _client(handler) -> PrivateApiClient:
    """A client whose HTTP goes to handler."""
    return PrivateApiClient("http://api", token=TOKEN, consumer_id="c1", transport=httpx.MockTransport(handler))


def _claim_answer(status_code: int, body: dict) -> PrivateApiClient:
    """A client whose claim call answers status_code with body."""
    return _client(lambda request: httpx.Response(status_code, json=body))


def test_claim_outcomes():
    """200 runs; 409 final or 404 skips; 409 running waits; 5xx is an infrastructure error."""
    model = {"id": 1, "human_readable_id": "m", "container_tag": "img", "use_gpu": False}
    ok = _claim_answer(200, {"task": {"uid": "u" * 22, "status": "running", "attempt": 2}, "model": model})
    result = ok.claim("u" * 22)
    assert result.outcome is ClaimOutcome.RUN and result.claim and result.claim.task.attempt == 2
    for status in ("finished", "failed", "cancelled"):
        assert _claim_answer(409, {"detail": "x", "status": status}).claim("u").outcome is ClaimOutcome.SKIP
    assert _claim_answer(404, {"detail": "no task"}).claim("u").outcome is ClaimOutcome.SKIP
    assert _claim_answer(409, {"detail": "x", "status": "running"}).claim("u").outcome is ClaimOutcome.LATER
    with pytest.raises(PrivateApiError):
        _claim_answer(503, {"detail": "db down"}).claim("u")
    with pytest.raises(PrivateApiError, match="INTERNAL_TOKEN"):
        _claim_answer(401, {"detail": "bad token"}).claim("u")


def test_heartbeat_and_finish_see_a_lost_lease():
    """Heartbeat: cancelled, 404 and 409 mean stop; finish: 409 means not ours (False)."""
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.headers["X-Internal-Token"] == TOKEN
        return httpx.Response(409, json={"detail": "not held", "status": "cancelled"})

    with pytest.raises(LeaseLost):
        _client(handler).heartbeat("u")
    with pytest.raises(LeaseLost, match="cancelled"):
        _claim_answer(200, {"status": "cancelled"}).heartbeat("u")
    assert _claim_answer(200, {"status": "running"}).heartbeat("u") == "running"
    assert _client(handler).finish("u", status="failed", reason="r", exit_code=3) is False
    assert seen[-1] == {"consumer_id": "c1", "status": "failed", "reason": "r", "exit_code": 3}
    with pytest.raises(ValueError):
        _client(handler).finish("u", status="cancelled", reason=None, exit_code=None)


def test_model_zip_sha256_is_checked(tmp_path: Path):
    """A model zip whose bytes do not match the expected sha256 is refused (retry later)."""
    client = _client(lambda request: httpx.Response(200, content=b"zipbytes", headers={"X-Zip-Sha256": "ab"}))
    with pytest.raises(PrivateApiError, match="changed"):
        client.download_model_zip("m", tmp_path / "m.zip", expected_sha256="0" * 64)


def test_folder_to_tar_to_zip_round_trip(tmp_path: Path):
    """A folder streamed as tar and converted back to zip keeps nested and empty folders and modes."""
    source = tmp_path / "src"
    (source / "a" / "b").mkdir(parents=True)
    (source / "empty").mkdir()
    (source / "a" / "b" / "f.bin").write_bytes(b"\x00" * 3_000_000)
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o750)
    tar_bytes = b"".join(folder_as_tar(source, arc_root="output"))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert all(member.uid == 0 for member in tar.getmembers())
    chunks = (tar_bytes[i : i + 7919] for i in range(0, len(tar_bytes), 7919))
    summary = tar_to_zip(chunks, tmp_path / "out.zip", strip="output")
    assert summary.files == 2 and summary.bytes == 3_000_010
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        infos = {info.filename: info for info in archive.infolist()}
        assert archive.read("a/b/f.bin") == b"\x00" * 3_000_000
        assert "empty/" in infos and "a/b/" in infos
        assert stat.S_IMODE(infos["run.sh"].external_attr >> 16) & 0o750 == 0o750


def test_empty_tar_gives_an_empty_zip(tmp_path: Path):
    """An /output with nothing in it becomes a valid zip with no entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("output")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    tar_to_zip([buffer.getvalue()], tmp_path / "e.zip", strip="output")
    with zipfile.ZipFile(tmp_path / "e.zip") as archive:
        assert archive.namelist() == []


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


def test_step_times_add_up_per_task_and_thread():
    """Steps timed in a task's threads add up by name; outside a task nothing is recorded."""
    times = StepTimes("uid-1")
    with step("outside"):
        pass
    with timing_task(times):
        for _ in range(2):
            with step("put input archive"):
                time.sleep(0.01)
    assert list(times.steps) == ["put input archive"] and times.steps["put input archive"] >= 0.02
    assert times.summary().startswith("put input archive 0.0") and "; total " in times.summary()


def test_bind_work_dir_setting(monkeypatch):
    """BIND_WORK_DIR: auto by default; the usual spellings of true and false; anything else is refused."""
    monkeypatch.setenv("INTERNAL_TOKEN", TOKEN)
    monkeypatch.setenv("RABBITMQ_URL", "amqp://u:a-random-broker-password@mq:5672/%2F")
    assert load_settings().bind_work_dir == "auto"
    for value, expected in (("true", "on"), ("0", "off"), ("OFF", "off"), ("", "auto")):
        monkeypatch.setenv("BIND_WORK_DIR", value)
        assert load_settings().bind_work_dir == expected
    monkeypatch.setenv("BIND_WORK_DIR", "sometimes")
    with pytest.raises(ValidationError, match="bind_work_dir"):
        load_settings()
