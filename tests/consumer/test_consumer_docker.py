"""The docker side of a task against the real docker engine, with tiny busybox model images."""

from __future__ import annotations

import stat
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from job_consumer.docker_executor import DockerExecutor, RunResult
from job_consumer.errors import ModelFailed
from job_consumer.sandbox import TASK_LABEL
from job_consumer.schemas import ModelInfo
from tests.consumer.helpers import make_model, make_zip, read_member, zip_entries

pytestmark = pytest.mark.docker


def run_task(
    executor: DockerExecutor,
    model: ModelInfo,
    tmp_path: Path,
    files: dict[str, bytes | None] | None = None,
    *,
    model_volume: str | None = None,
    abort: threading.Event | None = None,
    uid: str = "task-uid-0123456789abcdefghij",
) -> tuple[RunResult, Path]:
    """Prepare, run and collect one task the way the worker does; cleans up the task afterwards."""
    input_zip = make_zip(tmp_path / "input.zip", files if files is not None else {"a.txt": b"hello"})
    try:
        executor.ensure_image(model.container_tag)
        volumes = executor.prepare_task(task_uid=uid, model=model, input_zip=input_zip)
        result = executor.run(
            task_uid=uid, model=model, volumes=volumes, model_volume=model_volume, abort=abort or threading.Event()
        )
        output = tmp_path / "output.zip"
        executor.write_output_zip(result.container_id, output, volumes)
        return result, output
    finally:
        executor.cleanup_task(uid)


def test_output_keeps_nested_and_empty_folders_and_modes(executor: DockerExecutor, model_images, tmp_path):
    """The whole /output tree comes back: nested input copy, an empty folder, an executable's mode."""
    files = {"scans/ct/slice1.dcm": b"\x00\x01" * 1000, "notes.txt": b"n", "emptydir/": None}
    result, output = run_task(executor, make_model(model_images["copy"]), tmp_path, files)
    assert result.exit_code == 0, result.log_tail
    entries = zip_entries(output)
    assert read_member(output, "nested/deeper/scans/ct/slice1.dcm") == b"\x00\x01" * 1000
    assert read_member(output, "nested/deeper/notes.txt") == b"n"
    assert "empty/" in entries and entries["empty/"].is_dir()
    assert "nested/deeper/emptydir/" in entries
    assert stat.S_IMODE(entries["run-me.sh"].external_attr >> 16) == 0o750
    assert b"copied 3 entries" in result.log_tail


def test_empty_output_is_a_valid_empty_zip(executor: DockerExecutor, model_images, tmp_path):
    """A model that writes nothing gives a zip with no entries."""
    result, output = run_task(executor, make_model(model_images["exit3"]), tmp_path)
    assert result.exit_code == 3
    with zipfile.ZipFile(output) as archive:
        assert archive.namelist() == []
        assert archive.testzip() is None


def test_exit_code_and_stderr_tail(executor: DockerExecutor, model_images, tmp_path):
    """A non-zero exit is reported with the log's tail, stdout and stderr both."""
    result, _ = run_task(executor, make_model(model_images["exit3"]), tmp_path)
    assert result.exit_code == 3 and not result.oom_killed and not result.timed_out
    assert b"no DICOM series found" in result.log_tail and b"starting up" in result.log_tail


def test_timeout_kills_the_container(executor: DockerExecutor, model_images, tmp_path):
    """Past its timeout the container is killed promptly."""
    started = time.monotonic()
    result, _ = run_task(executor, make_model(model_images["sleep"], timeout=2), tmp_path)
    assert result.timed_out
    assert time.monotonic() - started < 20


def test_memory_limit_is_enforced(executor: DockerExecutor, model_images, tmp_path):
    """Allocating past mem_limit ends in the OOM killer (exit 137 or the OOMKilled flag)."""
    result, _ = run_task(executor, make_model(model_images["oom"], mem_limit="32m"), tmp_path)
    assert result.oom_killed or result.exit_code == 137, (result.exit_code, result.log_tail)


def test_no_network_unless_asked(executor: DockerExecutor, model_images, tmp_path):
    """Without `network` the container has only a loopback interface; with it, it has eth0."""
    _, output = run_task(executor, make_model(model_images["network"]), tmp_path)
    netdev = read_member(output, "netdev.txt").decode()
    assert "lo:" in netdev and "eth0" not in netdev
    assert read_member(output, "network.txt").strip() == b"unreachable"
    _, output = run_task(
        executor, make_model(model_images["network"], network=True), tmp_path, uid="task-uid-net2-0123456789abc"
    )
    assert "eth0" in read_member(output, "netdev.txt").decode()


def test_input_and_model_are_read_only_and_capabilities_dropped(executor: DockerExecutor, model_images, tmp_path):
    """Writing into /input or /model fails; no capabilities; no-new-privileges is on."""
    model = make_model(model_images["write_ro"], model_available=True, zip_sha256="ab" * 32)
    zip_path = make_zip(tmp_path / "model.zip", {"weights.txt": b"w"})
    volume = executor.ensure_model_volume(model, lambda dest: dest.write_bytes(zip_path.read_bytes()))
    _, output = run_task(executor, model, tmp_path, model_volume=volume)
    assert read_member(output, "input-rc.txt").strip() != b"0"
    assert b"Read-only file system" in read_member(output, "input-error.txt")
    assert read_member(output, "model-rc.txt").strip() != b"0"
    status = read_member(output, "status.txt").decode()
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status


def test_model_content_is_mounted_and_kept(executor: DockerExecutor, consumer_docker, model_images, tmp_path):
    """Model content is filled once per host, mounted at /model, and kept after the task."""
    model = make_model(model_images["read_model"], model_available=True, zip_sha256="cd" * 32)
    zip_path = make_zip(tmp_path / "model.zip", {"weights.txt": b"the weights", "sub/more.bin": b"x"})
    fetches: list[Path] = []

    def fetch(dest: Path) -> None:
        fetches.append(dest)
        dest.write_bytes(zip_path.read_bytes())

    try:
        volume = executor.ensure_model_volume(model, fetch)
        assert volume and executor.ensure_model_volume(model, fetch) == volume
        assert len(fetches) == 1
        _, output = run_task(executor, model, tmp_path, model_volume=volume)
        assert read_member(output, "weights-seen.txt") == b"the weights"
        assert consumer_docker.volumes.get(volume)
    finally:
        _remove_model_volumes(consumer_docker, model)


def test_interrupted_fill_is_redone_and_changed_zip_gets_a_new_volume(
    executor: DockerExecutor, consumer_docker, model_images, tmp_path
):
    """A fill that died half-way (no ready marker) is redone; a new zip sha256 gives a new volume, the old goes."""
    model = make_model(model_images["read_model"], model_available=True, zip_sha256="ef" * 32)
    zip_one = make_zip(tmp_path / "one.zip", {"weights.txt": b"one"})

    def broken(dest: Path) -> None:
        raise ConnectionError("the download broke half-way")

    try:
        with pytest.raises(ConnectionError):
            executor.ensure_model_volume(model, broken)
        volume = executor.ensure_model_volume(model, lambda d: d.write_bytes(zip_one.read_bytes()))
        _, output = run_task(executor, model, tmp_path, model_volume=volume)
        assert read_member(output, "weights-seen.txt") == b"one"

        changed = model.model_copy(update={"zip_sha256": "12" * 32})
        zip_two = make_zip(tmp_path / "two.zip", {"weights.txt": b"two"})
        volume_two = executor.ensure_model_volume(changed, lambda d: d.write_bytes(zip_two.read_bytes()))
        assert volume_two != volume
        _, output = run_task(executor, changed, tmp_path, model_volume=volume_two)
        assert read_member(output, "weights-seen.txt") == b"two"
        with pytest.raises(docker.errors.NotFound):
            consumer_docker.volumes.get(volume)
    finally:
        _remove_model_volumes(consumer_docker, model)


def test_two_consumers_fill_a_model_volume_once(consumer_docker, model_images, tmp_path):
    """Two consumers on one engine asking for the same content at once: one downloads, both get the volume."""
    model = make_model(model_images["read_model"], model_available=True, zip_sha256="77" * 32)
    zip_path = make_zip(tmp_path / "model.zip", {"weights.txt": b"shared"})
    fetches: list[str] = []

    def slow_fetch(dest: Path) -> None:
        fetches.append(dest.name)
        time.sleep(2)
        dest.write_bytes(zip_path.read_bytes())

    executors = [
        DockerExecutor(
            consumer_docker, consumer_id=f"test-fill-{i}-{time.time_ns()}", gpu_device=None, work_dir=tmp_path / str(i)
        )
        for i in range(2)
    ]
    results: list[str | None] = []
    threads = [
        threading.Thread(target=lambda e=e: results.append(e.ensure_model_volume(model, slow_fetch))) for e in executors
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 2 and results[0] == results[1] and results[0]
        assert len(fetches) == 1
    finally:
        for ex in executors:
            ex.cleanup_leftovers()
        _remove_model_volumes(consumer_docker, model)


def test_abort_stops_the_container_within_seconds(executor: DockerExecutor, model_images, tmp_path):
    """Setting abort (cancel, lost lease) stops a running container within a few seconds."""
    abort = threading.Event()
    timer = threading.Timer(2.0, abort.set)
    timer.start()
    started = time.monotonic()
    result, _ = run_task(executor, make_model(model_images["sleep"], timeout=120), tmp_path, abort=abort)
    assert result.aborted and not result.timed_out
    assert time.monotonic() - started < 15


def test_missing_image_is_a_model_failure(executor: DockerExecutor):
    """An image that is neither here nor pullable fails the task with a clear message."""
    with pytest.raises(ModelFailed, match="not on this host"):
        executor.ensure_image("inference-server-test/does-not-exist:nope")


def test_unsafe_input_zip_is_a_model_failure(executor: DockerExecutor, model_images, tmp_path):
    """An input zip that escapes its folder is refused before anything runs; nothing is left behind."""
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("../escape.txt", b"x")
    uid = "task-uid-unsafe-0123456789ab"
    model = make_model(model_images["copy"])
    try:
        with pytest.raises(ModelFailed, match="rejected"):
            executor.prepare_task(task_uid=uid, model=model, input_zip=bad)
    finally:
        executor.cleanup_task(uid)
    assert not executor.client.volumes.list(filters={"label": f"{TASK_LABEL}={uid}"})


def test_cleanup_removes_containers_and_volumes_by_label(
    executor: DockerExecutor, consumer_docker, model_images, tmp_path
):
    """cleanup_leftovers finds a crashed run's containers and volumes by the consumer's label."""
    uid = "task-uid-leftover-0123456789"
    model = make_model(model_images["sleep"])
    volumes = executor.prepare_task(task_uid=uid, model=model, input_zip=make_zip(tmp_path / "i.zip", {"a": b"b"}))
    consumer_docker.containers.create(
        model.container_tag, labels={TASK_LABEL: uid, "inference-server.consumer": executor.consumer_id}
    )
    assert executor.cleanup_leftovers() >= 3
    assert not consumer_docker.containers.list(all=True, filters={"label": f"{TASK_LABEL}={uid}"})
    for name in (volumes.input, volumes.output):
        with pytest.raises(docker.errors.NotFound):
            consumer_docker.volumes.get(name)


def test_log_tail_is_bounded(consumer_docker, model_images, tmp_path, consumer_id):
    """Only the last max_log_bytes of the log are kept."""
    ex = DockerExecutor(
        consumer_docker, consumer_id=consumer_id, gpu_device=None, work_dir=tmp_path / "w", max_log_bytes=1024
    )
    try:
        result, _ = run_task(ex, make_model(model_images["big_output"]), tmp_path, {"x": b"y"})
        assert len(result.log_tail) <= 1024
    finally:
        ex.cleanup_leftovers()


@pytest.fixture
def bind_executor(consumer_docker: docker.DockerClient, consumer_id: str, tmp_path: Path):
    """A CPU executor that probes whether the engine sees its work dir (it does here: same host, root)."""
    ex = DockerExecutor(
        consumer_docker, consumer_id=consumer_id, gpu_device=None, work_dir=tmp_path / "work", bind_mounts=None
    )
    yield ex
    ex.cleanup_leftovers()
    assert not consumer_docker.containers.list(all=True, filters={"label": f"inference-server.consumer={consumer_id}"})


def test_probe_finds_the_shared_work_dir_and_leaves_nothing(bind_executor: DockerExecutor, model_images):
    """The first task's probe finds that the engine sees the work dir; its container and folder are gone after."""
    assert bind_executor.uses_bind_mounts(model_images["copy"]) is True
    assert bind_executor.bind_mounts is True
    assert not bind_executor.client.containers.list(
        all=True, filters={"label": f"inference-server.consumer={bind_executor.consumer_id}"}
    )
    assert not list((bind_executor.work_dir / "tasks").rglob("probe-*"))


def test_probe_says_no_when_the_engine_sees_another_folder(consumer_docker, consumer_id, model_images, tmp_path):
    """A work dir the engine does not see (here: a path that exists only for this process) means volumes."""
    ex = DockerExecutor(
        consumer_docker, consumer_id=consumer_id, gpu_device=None, work_dir=tmp_path / "w", bind_mounts=None
    )
    original = ex._helper

    def elsewhere(image, volumes, labels, name=None, mounts=None):
        """Mount a different (empty) host folder at /probe, as an engine on another host would see."""
        other = tmp_path / "engine-side"
        other.mkdir(exist_ok=True)
        moved = [docker.types.Mount(target=m["Target"], source=str(other), type="bind") for m in mounts or []]
        return original(image, volumes, labels, name=name, mounts=moved)

    ex._helper = elsewhere  # type: ignore[method-assign]
    try:
        assert ex.uses_bind_mounts(model_images["copy"]) is False
    finally:
        ex.cleanup_leftovers()


def test_bind_mounted_task_gives_the_same_output_and_cleans_up(bind_executor: DockerExecutor, model_images, tmp_path):
    """With bind-mounted folders: nested and empty folders and modes come back; the task folder goes at cleanup."""
    files = {"scans/ct/slice1.dcm": b"\x00\x01" * 1000, "notes.txt": b"n", "emptydir/": None}
    uid = "task-uid-bind-0123456789abcd"
    result, output = run_task(bind_executor, make_model(model_images["copy"]), tmp_path, files, uid=uid)
    assert result.exit_code == 0, result.log_tail
    entries = zip_entries(output)
    assert read_member(output, "nested/deeper/scans/ct/slice1.dcm") == b"\x00\x01" * 1000
    assert "empty/" in entries and "nested/deeper/emptydir/" in entries
    assert stat.S_IMODE(entries["run-me.sh"].external_attr >> 16) == 0o750
    assert not list((bind_executor.work_dir / "tasks").rglob(f"task-{uid}-*"))


def test_bind_mounted_input_is_read_only(bind_executor: DockerExecutor, model_images, tmp_path):
    """A bind-mounted /input is as read-only for the model as a volume; the sandbox is the same."""
    _, output = run_task(bind_executor, make_model(model_images["write_ro"]), tmp_path)
    assert bind_executor.bind_mounts is True
    assert read_member(output, "input-rc.txt").strip() != b"0"
    assert b"Read-only file system" in read_member(output, "input-error.txt")
    status = read_member(output, "status.txt").decode()
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status


def test_bind_mounted_unsafe_input_leaves_no_folder(bind_executor: DockerExecutor, model_images, tmp_path):
    """An unsafe input zip is refused before anything runs, and its task folder is removed."""
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("../escape.txt", b"x")
    with pytest.raises(ModelFailed, match="rejected"):
        bind_executor.prepare_task(
            task_uid="task-uid-bad-bind-0123456", model=make_model(model_images["copy"]), input_zip=bad
        )
    assert not list((bind_executor.work_dir / "tasks").rglob("task-*"))
    assert not list(tmp_path.rglob("escape.txt"))


def _remove_model_volumes(client: docker.DockerClient, model: ModelInfo) -> None:
    """Remove a test model's content volumes (they are kept by design)."""
    for volume in client.volumes.list(filters={"label": f"inference-server.model-id={model.human_readable_id}"}):
        volume.remove(force=True)


_ = Callable
