"""The docker side of a task against the real docker engine, with tiny busybox model images."""

from __future__ import annotations

import fcntl
import json
import secrets
import stat
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from job_consumer.containers import Engine, RunResult
from job_consumer.errors import ModelFailed, RetryLater
from job_consumer.housekeeping import Housekeeping
from job_consumer.outputs import folder_to_zip
from job_consumer.sandbox import SCOPE_LABEL, Sandbox, TaskRef, model_container_kwargs
from job_consumer.schemas import Claim, ModelInfo, TaskInfo
from job_consumer.task_runner import Settle, TaskControl, TaskRunner
from job_consumer.workspace import Workspace
from tests.consumer.conftest import Box, make_box, remove_instance_containers
from tests.consumer.helpers import make_model, make_zip, mock_api, read_member, zip_entries

pytestmark = pytest.mark.docker


def run_task(
    box: Box,
    model: ModelInfo,
    tmp_path: Path,
    files: dict[str, bytes | None] | None = None,
    *,
    model_dir: Path | None = None,
    abort: threading.Event | None = None,
    uid: str = "task-uid-0123456789abcdefghij",
) -> tuple[RunResult, Path]:
    """Provision, run and collect one task the way the task runner does; cleans up the task afterwards."""
    dirs = box.workspace.task_dirs(uid, 1)
    make_zip(dirs.input_zip, files if files is not None else {"a.txt": b"hello"})
    container = None
    try:
        box.workspace.extract_input(dirs)
        box.engine.ensure_image(model.container_tag)
        task = TaskRef(uid, 1, box.instance_id, "test", "test-scope", int(time.time() + model.timeout + 60))
        kwargs = model_container_kwargs(
            model=model,
            task=task,
            input_dir=dirs.input,
            output_dir=dirs.output,
            model_dir=model_dir,
            sandbox=box.sandbox,
        )
        container = box.engine.create(kwargs)
        started = box.engine.start(container)
        result = box.engine.wait(container, timeout=model.timeout, abort=abort or threading.Event(), started=started)
        output = tmp_path / f"output-{secrets.token_hex(3)}.zip"
        folder_to_zip(dirs.output, output)
        return result, output
    finally:
        if container is not None:
            box.engine.remove(container.id or "")
        box.workspace.remove_task(dirs)


def test_output_keeps_nested_and_empty_folders_and_modes(box: Box, model_images, tmp_path):
    """The whole /output tree comes back: nested input copy, an empty folder, an executable's mode."""
    files = {"scans/ct/slice1.dcm": b"\x00\x01" * 1000, "notes.txt": b"n", "emptydir/": None}
    result, output = run_task(box, make_model(model_images["copy"]), tmp_path, files)
    assert result.exit_code == 0, result.log_tail
    entries = zip_entries(output)
    assert read_member(output, "nested/deeper/scans/ct/slice1.dcm") == b"\x00\x01" * 1000
    assert read_member(output, "nested/deeper/notes.txt") == b"n"
    assert "empty/" in entries and entries["empty/"].is_dir()
    assert "nested/deeper/emptydir/" in entries
    assert stat.S_IMODE(entries["run-me.sh"].external_attr >> 16) == 0o750
    assert b"copied 3 entries" in result.log_tail
    assert not list(box.workspace.tasks_root.rglob("task-uid-*")), "the task's folders are removed"


def test_empty_output_is_a_valid_empty_zip(box: Box, model_images, tmp_path):
    """A model that writes nothing gives a zip with no entries."""
    result, output = run_task(box, make_model(model_images["exit3"]), tmp_path)
    assert result.exit_code == 3
    with zipfile.ZipFile(output) as archive:
        assert archive.namelist() == []
        assert archive.testzip() is None


def test_exit_code_and_stderr_tail(box: Box, model_images, tmp_path):
    """A non-zero exit is reported with the log's tail, stdout and stderr both."""
    result, _ = run_task(box, make_model(model_images["exit3"]), tmp_path)
    assert result.exit_code == 3 and not result.oom_killed and not result.timed_out
    assert b"no DICOM series found" in result.log_tail and b"starting up" in result.log_tail


def test_timeout_kills_the_container(box: Box, model_images, tmp_path):
    """Past its timeout the container is killed promptly."""
    started = time.monotonic()
    result, _ = run_task(box, make_model(model_images["sleep"], timeout=2), tmp_path)
    assert result.timed_out
    assert time.monotonic() - started < 20


def test_memory_limit_is_enforced(box: Box, model_images, tmp_path):
    """Allocating past mem_limit ends in the OOM killer (exit 137 or the OOMKilled flag)."""
    result, _ = run_task(box, make_model(model_images["oom"], mem_limit="32m"), tmp_path)
    assert result.oom_killed or result.exit_code == 137, (result.exit_code, result.log_tail)


def test_no_network_unless_asked(box: Box, model_images, tmp_path):
    """Without `network` the container has only a loopback interface; with it, it has eth0."""
    _, output = run_task(box, make_model(model_images["network"]), tmp_path)
    netdev = read_member(output, "netdev.txt").decode()
    assert "lo:" in netdev and "eth0" not in netdev
    assert read_member(output, "network.txt").strip() == b"unreachable"
    _, output = run_task(box, make_model(model_images["network"], network=True), tmp_path, uid="task-uid-net2-0123456")
    assert "eth0" in read_member(output, "netdev.txt").decode()


def test_input_and_model_are_read_only_and_capabilities_dropped(box: Box, model_images, tmp_path):
    """Writing into /input or /model fails; no capabilities; no-new-privileges; not root."""
    model = make_model(model_images["write_ro"], model_available=True, zip_sha256="ab" * 32)
    zip_path = make_zip(tmp_path / "model.zip", {"weights.txt": b"w"})
    model_dir = box.workspace.model_dir(model, lambda dest: dest.write_bytes(zip_path.read_bytes()))
    _, output = run_task(box, model, tmp_path, model_dir=model_dir)
    assert read_member(output, "input-rc.txt").strip() != b"0"
    assert b"Read-only file system" in read_member(output, "input-error.txt")
    assert read_member(output, "model-rc.txt").strip() != b"0"
    status = read_member(output, "status.txt").decode()
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    assert read_member(output, "uid.txt").strip() == b"65534"


def test_sandbox_user_limits_tmp_and_no_gpu(box: Box, model_images, tmp_path):
    """Non-root 65534:65534, core 0, nofile 8192, a size-limited /tmp that works, NVIDIA_VISIBLE_DEVICES=void."""
    _, output = run_task(box, make_model(model_images["sandbox_facts"]), tmp_path)
    facts = {name: read_member(output, name).decode().strip() for name in zip_entries(output)}
    assert facts["uid.txt"] == "65534" and facts["gid.txt"] == "65534"
    assert facts["core.txt"] == "0" and facts["nofile.txt"] == "8192"
    assert "tmpfs" in facts["tmp-mount.txt"] and "size=1048576k" in facts["tmp-mount.txt"]
    assert facts["tmp-write.txt"] == "wrote to /tmp"
    assert facts["nvidia.txt"] == "void"
    _, output = run_task(
        box, make_model(model_images["sandbox_facts"], user="0:0"), tmp_path, uid="task-uid-root-01234567"
    )
    assert read_member(output, "uid.txt").strip() == b"0", "the model's `user` overrides the default"


def test_what_the_image_holds_at_input_and_output_never_shows(box: Box, consumer_docker, model_images, tmp_path):
    """Files an image has at /input and /output are hidden by the mounts and never end up in the result."""
    base = model_images["sandbox_facts"]
    tag = f"inference-server-test/consumer-baked:{base.rsplit(':', 1)[1]}"
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(
            f"FROM {base}\nRUN mkdir -p /input /output && echo baked > /input/baked.txt"
            " && echo baked > /output/baked.txt\n"
        )
        consumer_docker.images.build(path=context, tag=tag, rm=True, labels={"inference-server.test": "consumer"})
    _, output = run_task(box, make_model(tag), tmp_path, {"mine.txt": b"m"})
    names = set(zip_entries(output))
    assert "baked.txt" not in names
    assert "baked.txt" not in read_member(output, "input-listing.txt").decode()
    assert "mine.txt" in read_member(output, "input-listing.txt").decode()


def test_model_content_is_mounted_and_kept(box: Box, model_images, tmp_path):
    """Model content is filled once per host, mounted read-only at /model, and kept after the task."""
    model = make_model(model_images["read_model"], model_available=True, zip_sha256="cd" * 32)
    zip_path = make_zip(tmp_path / "model.zip", {"weights.txt": b"the weights", "sub/more.bin": b"x"})
    fetches: list[Path] = []

    def fetch(dest: Path) -> None:
        fetches.append(dest)
        dest.write_bytes(zip_path.read_bytes())

    model_dir = box.workspace.model_dir(model, fetch)
    assert model_dir and box.workspace.model_dir(model, fetch) == model_dir
    assert len(fetches) == 1
    _, output = run_task(box, model, tmp_path, model_dir=model_dir)
    assert read_member(output, "weights-seen.txt") == b"the weights"
    assert (model_dir / "weights.txt").read_bytes() == b"the weights"


def test_interrupted_fill_is_redone_and_changed_zip_gets_a_new_folder(box: Box, model_images, tmp_path):
    """A fill that died half-way leaves nothing that counts; a new zip sha256 gives a new folder."""
    model = make_model(model_images["read_model"], model_available=True, zip_sha256="ef" * 32)
    zip_one = make_zip(tmp_path / "one.zip", {"weights.txt": b"one"})

    def broken(dest: Path) -> None:
        dest.write_bytes(b"PK half a zip")
        raise ConnectionError("the download broke half-way")

    with pytest.raises(ConnectionError):
        box.workspace.model_dir(model, broken)
    assert not [p for p in box.workspace.models_root.iterdir() if not p.name.endswith(".lock")]
    model_dir = box.workspace.model_dir(model, lambda d: d.write_bytes(zip_one.read_bytes()))
    _, output = run_task(box, model, tmp_path, model_dir=model_dir)
    assert read_member(output, "weights-seen.txt") == b"one"

    changed = model.model_copy(update={"zip_sha256": "12" * 32})
    zip_two = make_zip(tmp_path / "two.zip", {"weights.txt": b"two"})
    dir_two = box.workspace.model_dir(changed, lambda d: d.write_bytes(zip_two.read_bytes()))
    assert model_dir is not None and dir_two is not None and dir_two != model_dir
    assert [key for key, _ in box.workspace.old_model_versions(changed)] == [model.content_key]
    hold = box.workspace.hold_model(model)  # a task still mounts the old version
    assert hold is not None and box.workspace.remove_model_version(model.content_key or "") is False
    assert model_dir.is_dir()
    hold.close()
    assert box.workspace.remove_model_version(model.content_key or "") is True
    assert not model_dir.exists() and dir_two.is_dir()


def test_two_consumers_fill_model_content_once(tmp_path):
    """Two consumers on one host asking for the same content at once: one downloads (under the flock), both get it."""
    model = make_model("img", model_available=True, zip_sha256="77" * 32)
    zip_path = make_zip(tmp_path / "model.zip", {"weights.txt": b"shared"})
    fetches: list[str] = []

    def slow_fetch(dest: Path) -> None:
        fetches.append(dest.name)
        time.sleep(1.5)
        dest.write_bytes(zip_path.read_bytes())

    workspaces = [Workspace(tmp_path / "work", instance_id=f"c{i}") for i in range(2)]
    results: list[Path | None] = []
    threads = [threading.Thread(target=lambda w=w: results.append(w.model_dir(model, slow_fetch))) for w in workspaces]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and results[0] == results[1] and results[0]
    assert len(fetches) == 1
    assert (results[0] / "weights.txt").read_bytes() == b"shared"


def test_fill_lock_is_an_flock_and_waits(tmp_path):
    """While another process holds the model's lock file, a fill waits and gives up after its timeout."""
    model = make_model("img", model_available=True, zip_sha256="88" * 32)
    workspace = Workspace(tmp_path / "work", instance_id="c", fill_timeout=1.0)
    workspace.models_root.mkdir(parents=True)
    with open(workspace.models_root / f".{model.content_key}.lock", "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(RetryLater, match="gave up waiting"):
            workspace.model_dir(model, lambda dest: None)


def test_abort_stops_the_container_within_seconds(box: Box, model_images, tmp_path):
    """Setting abort (cancel, lost lease) stops a running container within a few seconds."""
    abort = threading.Event()
    timer = threading.Timer(2.0, abort.set)
    timer.start()
    started = time.monotonic()
    result, _ = run_task(box, make_model(model_images["sleep"], timeout=120), tmp_path, abort=abort)
    assert result.aborted and not result.timed_out
    assert time.monotonic() - started < 15


def test_missing_image_is_a_model_failure(box: Box):
    """An image that is neither here nor to be pulled fails the task with a clear message."""
    with pytest.raises(ModelFailed, match="not on this host"):
        box.engine.ensure_image("inference-server-test/does-not-exist:nope")


def test_unsafe_input_zip_is_a_model_failure(box: Box, tmp_path):
    """An input zip that escapes its folder is refused before anything runs."""
    dirs = box.workspace.task_dirs("task-uid-unsafe-0123456789ab", 1)
    with zipfile.ZipFile(dirs.input_zip, "w") as archive:
        archive.writestr("../escape.txt", b"x")
    with pytest.raises(ModelFailed, match="rejected"):
        box.workspace.extract_input(dirs)
    box.workspace.remove_task(dirs)
    assert not list(tmp_path.rglob("escape.txt"))


def test_log_tail_is_bounded(consumer_docker, model_images, tmp_path, consumer_id):
    """Only the last max_log_bytes of the log are kept."""
    small = make_box(consumer_docker, tmp_path / "w", consumer_id, max_log_bytes=1024)
    try:
        result, _ = run_task(small, make_model(model_images["big_output"]), tmp_path, {"x": b"y"})
        assert len(result.log_tail) <= 1024
    finally:
        remove_instance_containers(consumer_docker, consumer_id)


def test_reaper_removes_orphans_by_lease_and_deadline(consumer_docker, model_images, tmp_path):
    """Containers of this scope whose lease is not live, or past their deadline, go; live ones and others stay."""
    scope = f"test-reap-{secrets.token_hex(4)}"
    checked: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        leases = json.loads(request.content)["leases"]
        checked.extend(leases)
        return httpx.Response(200, json={"live": [lease["uid"].startswith("live") for lease in leases]})

    api = mock_api(handler, "me-0123456789ab")
    workspace = Workspace(tmp_path / "work", instance_id="me-0123456789ab")
    engine = Engine(consumer_docker, pull_missing_images=False)
    housekeeping = Housekeeping(
        api=api, engine=engine, workspace=workspace, queues=["inference.tasks.cpu"], scope=scope, gpu_device=None
    )
    future, past = int(time.time()) + 3600, int(time.time()) - 1

    def container(uid: str, deadline: int, container_scope: str = scope) -> str:
        task = TaskRef(uid, 1, "gone-0123456789ab", "gone", container_scope, deadline)
        return consumer_docker.containers.create(model_images["sleep"], labels=task.labels("model")).id or ""

    dead, live, late, other = (
        container("dead-task-0123456789abcd", future),
        container("live-task-0123456789abcd", future),
        container("live-late-0123456789abcd", past),
        container("dead-other-scope-01234567", future, "another-scope"),
    )
    orphan_dir = workspace.tasks_root / "gone-0123456789ab" / "dead-task-0123456789abcd-1"
    live_dir = workspace.tasks_root / "gone-0123456789ab" / "live-task-0123456789abcd-1"
    for folder in (orphan_dir, live_dir):
        (folder / "output").mkdir(parents=True)
    try:
        assert housekeeping.reap() == 3
        remaining = {c.id for c in consumer_docker.containers.list(all=True, filters={"label": f"{SCOPE_LABEL}"})}
        assert live in remaining and other in remaining
        assert dead not in remaining and late not in remaining
        assert not orphan_dir.exists() and live_dir.is_dir()
        assert {lease["consumer_id"] for lease in checked} == {"gone-0123456789ab"}
    finally:
        for container_id in (dead, live, late, other):
            engine.remove(container_id)


def test_reaper_skips_when_the_private_api_has_no_lease_check(consumer_docker, model_images, tmp_path):
    """An older private API (no POST /internal/leases/check) means no reaping by lease, only by deadline."""
    api = mock_api(lambda request: httpx.Response(404, json={"detail": "Not Found"}), "me-0123456789ab")
    scope = f"test-reap-{secrets.token_hex(4)}"
    engine = Engine(consumer_docker, pull_missing_images=False)
    housekeeping = Housekeeping(
        api=api,
        engine=engine,
        workspace=Workspace(tmp_path / "w", instance_id="me-0123456789ab"),
        queues=["inference.tasks.cpu"],
        scope=scope,
        gpu_device=None,
    )
    task = TaskRef("dead-task-0123456789abcd", 1, "gone-0123456789ab", "gone", scope, int(time.time()) + 3600)
    kept = consumer_docker.containers.create(model_images["sleep"], labels=task.labels("model")).id or ""
    try:
        assert housekeeping.reap() == 0
        assert consumer_docker.containers.get(kept)
    finally:
        engine.remove(kept)


def test_gpu_error_mid_task_releases_it_as_infrastructure(consumer_docker, model_images, tmp_path):
    """A GPU task whose container cannot get the GPU: released with infrastructure=true, GPU marked, nothing left."""
    calls: list[tuple[str, dict]] = []
    input_zip = make_zip(tmp_path / "in.zip", {"a.txt": b"a"}).read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/input"):
            return httpx.Response(200, content=input_zip)
        calls.append((request.url.path, json.loads(request.content or b"{}")))
        return httpx.Response(200, json={"status": "running"})

    if any(runtime == "nvidia" for runtime in (consumer_docker.info().get("Runtimes") or {})):
        pytest.skip("this engine has the NVIDIA runtime: the GPU error cannot be injected here")
    instance = f"gpu-{secrets.token_hex(6)}"
    api = mock_api(handler, instance)
    gpu_errors: list[str] = []
    runner = TaskRunner(
        api=api,
        engine=Engine(consumer_docker, pull_missing_images=False),
        workspace=Workspace(tmp_path / "work", instance_id=instance),
        sandbox=Sandbox(gpu_device="0"),
        scope="test-gpu-error",
        on_gpu_error=gpu_errors.append,
    )
    uid = "gpu-task-0123456789abcdefgh"
    claim = Claim(
        task=TaskInfo(uid=uid, status="running", attempt=1),
        model=make_model(model_images["copy"], use_gpu=True),
    )
    try:
        result = runner.run(claim, TaskControl())
    finally:
        remove_instance_containers(consumer_docker, instance)
    assert result.outcome == "released" and result.settle is Settle.ACK
    assert gpu_errors and "could not select device driver" in gpu_errors[0]
    (release,) = [body for path, body in calls if path.endswith("/release")]
    assert release["infrastructure"] is True and release["attempt"] == 1 and release["consumer_id"] == instance
    assert "GPU" in release["reason"]
    assert not [path for path, _ in calls if path.endswith(("/finish", "/output"))]
    assert not list((tmp_path / "work" / "tasks").rglob(f"{uid}-1"))


def test_a_new_run_removes_the_containers_of_earlier_runs_of_its_task(consumer_docker, model_images):
    """A crashed consumer's model container must not keep running (on the GPU) beside the rerun of its task."""
    scope = f"test-rerun-{secrets.token_hex(4)}"
    uid = f"rerun-{secrets.token_hex(10)}"
    deadline = int(time.time()) + 3600
    crashed = TaskRef(uid, 1, "crashed-0123456789ab", "crashed", scope, deadline)
    other_task = TaskRef(f"other-{secrets.token_hex(10)}", 1, "crashed-0123456789ab", "crashed", scope, deadline)
    rerun = TaskRef(uid, 2, "new-0123456789abcd", "new", scope, deadline)
    stale = consumer_docker.containers.run(model_images["sleep"], detach=True, labels=crashed.labels("model"))
    kept = consumer_docker.containers.create(model_images["sleep"], labels=other_task.labels("model"))
    try:
        runner = TaskRunner.__new__(TaskRunner)  # only its engine is used here
        runner.engine = Engine(consumer_docker, pull_missing_images=False)
        runner._remove_earlier_runs(rerun)
        names = {c.id for c in consumer_docker.containers.list(all=True, filters={"label": f"{SCOPE_LABEL}={scope}"})}
        assert stale.id not in names and kept.id in names
    finally:
        for container in (stale, kept):
            runner.engine.remove(container.id or "")
