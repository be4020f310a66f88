"""Run view, consumer side without docker: progress file parsing, GPU info parsing, heartbeats, provenance."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from job_consumer.config import ConsumerSettings
from job_consumer.outputs import folder_to_zip
from job_consumer.progress import MAX_MESSAGE, Reporter, parse_progress, read_progress
from job_consumer.provenance import GPU_QUERY, GpuInfo, Record, parse_gpu_query, query_gpu
from job_consumer.sandbox import gpu_probe_kwargs, output_relative
from job_consumer.schemas import Claim, Progress, TaskInfo
from tests.consumer.helpers import make_model, mock_api, zip_entries


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.42", Progress(0.42)),
        ("0.42 slice 42 of 100\n", Progress(0.42, "slice 42 of 100")),
        ("42% segmenting", Progress(0.42, "segmenting")),
        ("42.5%", Progress(0.425)),
        ("1", Progress(1.0)),
        ("0", Progress(0.0)),
        ("1.7 too far", Progress(1.0, "too far")),
        ("-3", Progress(0.0)),
        ("250%", Progress(1.0)),
        ("0.1 first\n0.2 second\n\n", Progress(0.2, "second")),  # a model that appends: the last line counts
        ("  0.3   padded  ", Progress(0.3, "padded")),
        ("0.5 tab\there", Progress(0.5, "tab here")),
    ],
)
def test_progress_fraction_or_percent_with_a_message(text: str, expected: Progress) -> None:
    assert parse_progress(text) == expected


@pytest.mark.parametrize("text", ["", "\n\n", "half", "nan", "inf 100", "-inf", "%", "0,5", "0.5%%", "1e999"])
def test_progress_that_is_not_a_fraction_is_ignored(text: str) -> None:
    assert parse_progress(text) is None


def test_progress_message_is_bounded_and_printable() -> None:
    parsed = parse_progress("0.5 " + "a\x1b[31m" * 500)
    assert parsed is not None and parsed.message is not None
    assert len(parsed.message) == MAX_MESSAGE and parsed.message.endswith("…")
    assert "\x1b" not in parsed.message


def test_progress_file_read_from_its_tail_never_through_links_or_pipes(tmp_path: Path) -> None:
    path = tmp_path / ".progress"
    assert read_progress(path) is None
    path.write_text("".join(f"0.{i % 10} step {i}\n" for i in range(2000)) + "0.99 almost\n")
    assert read_progress(path) == Progress(0.99, "almost")
    path.write_bytes(b"\xff\xfe 0.5")
    assert read_progress(path) is None
    secret = tmp_path / "secret"
    secret.write_text("0.7 host file")
    path.unlink()
    path.symlink_to(secret)
    assert read_progress(path) is None
    path.unlink()
    os.mkfifo(path)  # a model could leave a pipe: reading it must not block the heartbeat
    started = time.monotonic()
    assert read_progress(path) is None
    assert time.monotonic() - started < 1


def test_progress_file_must_be_under_output(monkeypatch: pytest.MonkeyPatch) -> None:
    assert str(output_relative("/output/.progress")) == ".progress"
    assert str(output_relative("/output/logs/progress.txt")) == "logs/progress.txt"
    for bad in ("/tmp/progress", "/output", "output/.progress", "/output/../etc/x", "/outputs/x"):
        with pytest.raises(ValueError):
            output_relative(bad)
    monkeypatch.setenv("RABBITMQ_URL", "amqp://u:a-random-broker-password@mq:5672/%2F")
    monkeypatch.setenv("INTERNAL_TOKEN", "a-real-token-0123456789abcdef")
    assert ConsumerSettings().progress_file == "/output/.progress"  # type: ignore[call-arg]
    monkeypatch.setenv("PROGRESS_FILE", "/tmp/progress")
    with pytest.raises(ValueError, match="PROGRESS_FILE"):
        ConsumerSettings()  # type: ignore[call-arg]


def test_the_progress_file_never_goes_into_the_output_zip(tmp_path: Path) -> None:
    output = tmp_path / "out"
    (output / "sub").mkdir(parents=True)
    (output / ".progress").write_text("1 done")
    (output / "sub" / ".progress").write_text("kept: not the progress file")
    (output / "result.txt").write_text("r")
    folder_to_zip(output, tmp_path / "o.zip", exclude=frozenset({".progress"}))
    assert set(zip_entries(tmp_path / "o.zip")) == {"sub/", "sub/.progress", "result.txt"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "NVIDIA H200, GPU-5d3a1f2e-8c1b-4f7a-9e2d-0123456789ab, 550.54.15\n",
            GpuInfo("NVIDIA H200", "GPU-5d3a1f2e-8c1b-4f7a-9e2d-0123456789ab", "550.54.15"),
        ),
        ("Tesla T4, GPU-abc, 535.104.05", GpuInfo("Tesla T4", "GPU-abc", "535.104.05")),
        ("NVIDIA RTX A6000, Ada, GPU-1, 545.1", GpuInfo("NVIDIA RTX A6000, Ada", "GPU-1", "545.1")),  # a comma
        ("\nNVIDIA A100-SXM4-80GB, MIG-9f, 525.85.12\n", GpuInfo("NVIDIA A100-SXM4-80GB", "MIG-9f", "525.85.12")),
    ],
)
def test_gpu_query_is_parsed(text: str, expected: GpuInfo) -> None:
    assert parse_gpu_query(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "No devices were found",
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        "name, uuid",
        "H200, , 550",
        "H200, not-a-uuid, 550",
    ],
)
def test_gpu_query_errors_are_not_gpu_info(text: str) -> None:
    assert parse_gpu_query(text) is None


def test_gpu_is_asked_with_its_device_when_nvidia_smi_is_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\necho "NVIDIA H200, GPU-77, 550.54.15"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert query_gpu("GPU-77") == GpuInfo("NVIDIA H200", "GPU-77", "550.54.15")
    assert (tmp_path / "args").read_text().split() == [*GPU_QUERY[1:], "-i", "GPU-77"]
    fake.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    assert query_gpu("3") is None


def test_gpu_query_container_sees_only_its_gpu_with_the_driver_tools() -> None:
    kwargs = gpu_probe_kwargs(image="img", gpu_device="1", labels={"a": "b"}, command=GPU_QUERY, utility=True)
    assert kwargs["command"] == GPU_QUERY and "-i" not in kwargs["command"]
    assert kwargs["environment"]["NVIDIA_VISIBLE_DEVICES"] == "1"
    assert kwargs["environment"]["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    (request,) = kwargs["device_requests"]
    assert request["DeviceIDs"] == ["1"] and "utility" in request["Capabilities"][0]
    assert gpu_probe_kwargs(image="img", gpu_device="1", labels={})["command"] == ["true"]


def test_a_phase_change_is_reported_at_once_with_the_progress(tmp_path: Path) -> None:
    beats: list[dict] = []
    seen = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        beats.append(json.loads(request.content))
        seen.set()
        return httpx.Response(200, json={"status": "running"})

    progress = tmp_path / ".progress"
    progress.write_text("42% half way")
    reporter = Reporter(mock_api(handler, "c-0123"), "u", 2, interval=60, on_lost=lambda: None)
    reporter.start()
    assert seen.wait(5), "the first beat (preparing) goes out at the claim, not after the interval"
    seen.clear()
    reporter.set_phase("running", progress_path=progress)
    assert seen.wait(5)
    reporter.stop()
    assert beats[0] == {"consumer_id": "c-0123", "attempt": 2, "phase": "preparing"}
    assert beats[1] == {
        "consumer_id": "c-0123",
        "attempt": 2,
        "phase": "running",
        "progress": 0.42,
        "progress_message": "half way",
    }


def test_a_cancel_seen_by_the_heartbeat_stops_the_task() -> None:
    lost = threading.Event()
    api = mock_api(lambda request: httpx.Response(200, json={"status": "cancelled"}), "c-0123")
    reporter = Reporter(api, "u", 1, interval=60, on_lost=lost.set)
    reporter.start()
    assert lost.wait(5)
    reporter.stop()


def test_provenance_names_what_ran_and_times_each_phase() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    claim = Claim(
        task=TaskInfo(
            uid="u",
            status="running",
            attempt=2,
            model_version=3,
            created_at=created,
            started_at=created + timedelta(seconds=5),
        ),
        model=make_model("img:1", model_available=True, zip_sha256="b" * 64),
    )
    record = Record(claim=claim, consumer_name="host-gpu0", instance_id="host-gpu0-abc", host="host")
    for phase in ("preparing", "running", "uploading"):
        record.enter(phase)
    record.exit_code = 0
    out = record.as_dict()
    assert out["model"] == {"human_readable_id": claim.model.human_readable_id, "version": 3, "zip_sha256": "b" * 64}
    assert out["consumer"] == {"name": "host-gpu0", "instance_id": "host-gpu0-abc", "host": "host"}
    assert out["attempt"] == 2 and out["exit_code"] == 0 and out["gpu"] is None
    assert list(out["timings"]) == ["queued", "preparing", "running", "uploading"]
    assert out["timings"]["queued"]["seconds"] == 5.0
    assert all(t["seconds"] >= 0 for t in out["timings"].values())
    assert json.loads(json.dumps(out)) == out


def test_without_nvidia_smi_here_the_gpu_is_asked_in_a_probe_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi on this PATH
    asked: list[dict] = []

    class FakeEngine:
        def run_once(self, kwargs: dict) -> tuple[int, bytes]:
            asked.append(kwargs)
            return 0, b"NVIDIA H200, GPU-9, 550.54.15\n"

    engine: Any = FakeEngine()
    info = query_gpu("GPU-9", engine=engine, probe_image="consumer:1", labels={"inference-server.scope": "s"})
    assert info == GpuInfo("NVIDIA H200", "GPU-9", "550.54.15")
    (kwargs,) = asked
    assert kwargs["image"] == "consumer:1" and kwargs["command"] == GPU_QUERY
    assert kwargs["labels"]["inference-server.scope"] == "s", "the reaper finds it if the consumer dies meanwhile"
    assert query_gpu("GPU-9") is None, "no engine, no nvidia-smi: no GPU info (never an error)"
