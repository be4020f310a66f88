"""Everything the consumer does with the docker engine: volumes, input, model content, the run, output, cleanup."""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import secrets
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import Mount
from docker.utils import parse_repository_tag

from common.zips import UnsafeZipError, ZipLimits, safe_extract
from job_consumer.errors import DockerUnavailable, ModelFailed, RetryLater
from job_consumer.sandbox import (
    CONSUMER_LABEL,
    MODEL_LABEL,
    ROLE_LABEL,
    TASK_LABEL,
    model_container_kwargs,
    task_labels,
)
from job_consumer.schemas import ModelInfo
from job_consumer.tar_stream import OutputSummary, folder_as_tar, folder_to_zip, tar_to_zip
from job_consumer.timing import record, step

__all__ = ["DockerExecutor", "RunResult", "TaskVolumes"]

log = logging.getLogger(__name__)

MODEL_ID_LABEL = "inference-server.model-id"
LOCKED_AT_LABEL = "inference-server.locked-at"
_HELPER_ENTRYPOINT = ["/inference-server-helper-never-started"]
_WAIT_STEP_SECONDS = 1.0


@dataclass(frozen=True)
class TaskVolumes:
    """The task's /input and /output: two volumes, or two folders of host_dir bind-mounted when it is set."""

    input: str
    output: str
    host_dir: Path | None = None


@dataclass
class RunResult:
    """How a model container ended."""

    container_id: str
    exit_code: int | None
    oom_killed: bool = False
    timed_out: bool = False
    aborted: bool = False
    duration: float = 0.0
    log_tail: bytes = b""
    log_truncated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _path_safe(text: str) -> str:
    """text with every character but letters, digits, `_` and `-` replaced, for a folder name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _remove_tree(path: Path) -> None:
    """Remove a task folder, making read-only folders in it writable first; what cannot go is logged."""
    if not path.exists():
        return
    for directory, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("could not remove all of %s", path)


def _docker_call(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: turn engine and transport failures into DockerUnavailable (retry later) with a message."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except (ModelFailed, RetryLater):
                raise
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise DockerUnavailable(f"docker failed while trying to {what}: {exc}") from exc

        inner.__name__ = func.__name__
        inner.__doc__ = func.__doc__
        return inner

    return wrap


class DockerExecutor:
    """Runs one task at a time for one consumer on one docker engine."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        consumer_id: str,
        gpu_device: str | None,
        work_dir: Path,
        pids_limit: int = 4096,
        max_log_bytes: int = 1024 * 1024,
        zip_limits: ZipLimits | None = None,
        pull_missing_images: bool = True,
        stop_timeout: int = 5,
        model_fill_timeout: float = 3600.0,
        image_cache_seconds: float = 60.0,
        bind_mounts: bool | None = False,
    ) -> None:
        self.client = client
        self.consumer_id = consumer_id
        self.gpu_device = gpu_device
        self.work_dir = work_dir
        self.pids_limit = pids_limit
        self.max_log_bytes = max_log_bytes
        self.zip_limits = zip_limits or ZipLimits()
        self.pull_missing_images = pull_missing_images
        self.stop_timeout = stop_timeout
        self.model_fill_timeout = model_fill_timeout
        self.image_cache_seconds = image_cache_seconds
        self._cpus: int | None = None
        # Image tags found on this host lately, with when: one inspect per tag and minute, not one per task.
        self._images_seen: dict[str, float] = {}
        # True: /input and /output are folders under work_dir bind-mounted into the model container (the engine sees
        # work_dir at the same path), so no archive goes through the engine; False: volumes filled and read through
        # the engine; None: find out with a probe at the first task.
        self.bind_mounts = bind_mounts
        self._bind_root = work_dir / "tasks" / _path_safe(consumer_id)
        self.work_dir.mkdir(parents=True, exist_ok=True)

    # ---- images -------------------------------------------------------------------------------------------

    @_docker_call("find the model's image")
    def ensure_image(self, tag: str) -> None:
        """Make sure the image is on this host, pulling it if allowed; ModelFailed when it cannot be had."""
        seen = self._images_seen.get(tag)
        if seen is not None and time.monotonic() - seen < self.image_cache_seconds:
            return
        try:
            self.client.images.get(tag)
            self._images_seen[tag] = time.monotonic()
            return
        except docker.errors.ImageNotFound:
            self._images_seen.pop(tag, None)
        if not self.pull_missing_images:
            raise ModelFailed(f"image {tag!r} is not on this host (pulling is turned off)")
        repository, version = parse_repository_tag(tag)
        log.info("image %s is missing; pulling it", tag)
        try:
            self.client.images.pull(repository, tag=version or "latest")
        except docker.errors.APIError as exc:
            raise ModelFailed(
                f"image {tag!r} is not on this host and could not be pulled: {exc.explanation or exc}"
            ) from exc
        self._images_seen[tag] = time.monotonic()

    # ---- per-task volumes and input ----------------------------------------------------------------------

    def _helper(
        self,
        image: str,
        volumes: dict[str, dict[str, str]],
        labels: dict[str, str],
        name: str | None = None,
        mounts: list[Mount] | None = None,
    ) -> Container:
        """A created, never started container that mounts volumes so archives can be put into them."""
        return self.client.containers.create(
            image,
            entrypoint=_HELPER_ENTRYPOINT,
            command=[],
            volumes=volumes,
            mounts=mounts or [],
            labels=labels,
            network_disabled=True,
            name=name,
        )

    @_docker_call("probe whether the engine sees the work dir")
    def uses_bind_mounts(self, image: str) -> bool:
        """Whether tasks get bind-mounted folders; the first call with bind_mounts=None probes it (with image)."""
        if self.bind_mounts is None:
            self.bind_mounts = self._probe_shared_work_dir(image)
        return self.bind_mounts

    def _probe_shared_work_dir(self, image: str) -> bool:
        """True when the engine sees work_dir at the same path as this process (a file written here reads back)."""
        if os.geteuid() != 0:
            # A model may write files only root can read or remove; such a consumer reads /output through the engine.
            log.info("the consumer does not run as root: /input and /output are volumes filled through the engine")
            return False
        token = secrets.token_hex(16)
        probe = self._bind_root / f"probe-{token[:8]}"
        probe.mkdir(parents=True, exist_ok=True)
        (probe / "token").write_text(token)
        helper: Container | None = None
        try:
            helper = self._helper(
                image,
                {},
                {CONSUMER_LABEL: self.consumer_id, ROLE_LABEL: "probe"},
                mounts=[Mount(target="/probe", source=str(probe), type="bind", read_only=True)],
            )
            stream, _ = self.client.api.get_archive(helper.id, "/probe/token")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.extractfile("token")
                shared = member is not None and member.read() == token.encode()
        except (docker.errors.APIError, tarfile.TarError, KeyError) as exc:
            log.info("the engine does not see %s: %s", self.work_dir, getattr(exc, "explanation", None) or exc)
            shared = False
        finally:
            if helper is not None:
                with contextlib.suppress(docker.errors.APIError):
                    helper.remove(force=True)
            _remove_tree(probe)
        log.info(
            "task /input and /output: %s",
            f"folders under {self._bind_root}, bind-mounted" if shared else "volumes filled through the engine",
        )
        return shared

    @_docker_call("prepare the task's input")
    def prepare_task(self, *, task_uid: str, model: ModelInfo, input_zip: Path) -> TaskVolumes:
        """Make the task's /input (holding the safely extracted input zip) and its empty /output."""
        if self.uses_bind_mounts(model.container_tag):
            volumes = self.task_folders(task_uid)
            self.fill_folders(volumes, input_zip)
            return volumes
        return self._prepare_volumes(task_uid, model, input_zip)

    def task_folders(self, task_uid: str) -> TaskVolumes:
        """The task's empty /input and /output folders under work_dir (for bind mounts)."""
        host_dir = self._bind_root / f"task-{_path_safe(task_uid)}-{secrets.token_hex(4)}"
        (host_dir / "input").mkdir(parents=True)
        (host_dir / "output").mkdir()
        return TaskVolumes(input=str(host_dir / "input"), output=str(host_dir / "output"), host_dir=host_dir)

    def fill_folders(self, volumes: TaskVolumes, input_zip: Path) -> None:
        """Extract the input into the /input folder, readable by any user; make /output writable by anyone."""
        if volumes.host_dir is None:
            raise ValueError("fill_folders needs the task folders of task_folders()")
        host_dir, input_dir, output_dir = volumes.host_dir, Path(volumes.input), Path(volumes.output)
        try:
            with step("input extract"):
                safe_extract(input_zip, input_dir, self.zip_limits)
        except UnsafeZipError as exc:
            _remove_tree(host_dir)
            raise ModelFailed(f"the input zip was rejected: {exc}") from exc
        # Models may run as any user: what they read must be readable (and folders enterable) by all.
        for directory, dirs, files in os.walk(input_dir):
            for name in files:
                path = os.path.join(directory, name)
                os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | 0o444)
            for name in dirs:
                os.chmod(os.path.join(directory, name), 0o755)
        input_dir.chmod(0o755)
        output_dir.chmod(0o1777)

    def _prepare_volumes(self, task_uid: str, model: ModelInfo, input_zip: Path) -> TaskVolumes:
        """Create the task's labelled /input and /output volumes and put the safely extracted input into /input.

        The never started helper container that receives the input creates both volumes (with their labels) as it
        is created, and stays until the task's cleanup: one engine call each instead of four.
        """
        suffix = secrets.token_hex(4)
        volumes = TaskVolumes(
            input=f"inference-task-{task_uid}-input-{suffix}",
            output=f"inference-task-{task_uid}-output-{suffix}",
        )
        mounts = [
            Mount(
                target=f"/{role}",
                source=name,
                type="volume",
                labels=task_labels(task_uid=task_uid, consumer_id=self.consumer_id, role=role),
            )
            for name, role in ((volumes.input, "input"), (volumes.output, "output"))
        ]
        staging = Path(tempfile.mkdtemp(prefix=f"input-{task_uid}-", dir=self.work_dir))
        try:
            try:
                with step("input extract"):
                    safe_extract(input_zip, staging, self.zip_limits)
            except UnsafeZipError as exc:
                raise ModelFailed(f"the input zip was rejected: {exc}") from exc
            with step("helper create"):
                helper = self._helper(
                    model.container_tag,
                    {},
                    task_labels(task_uid=task_uid, consumer_id=self.consumer_id, role="helper"),
                    mounts=mounts,
                )
            # `output/` is made writable by anyone: the model's image may run as a non-root user.
            stream = folder_as_tar(staging, arc_root="input", extra_dirs={"output": 0o1777})
            with step("put input archive"):
                if not helper.put_archive("/", stream):
                    raise DockerUnavailable("docker refused the task's input archive")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return volumes

    # ---- model content -----------------------------------------------------------------------------------

    def _volume_exists(self, name: str) -> bool:
        """True when a volume of that name exists."""
        try:
            self.client.volumes.get(name)
            return True
        except docker.errors.NotFound:
            return False

    @_docker_call("fill the model's content volume")
    def ensure_model_volume(self, model: ModelInfo, fetch_zip: Callable[[Path], None]) -> str | None:
        """The name of the read-only /model volume for this model's zip, filled once per host; None without a zip.

        The content volume is complete only when its `.ready` marker volume exists (created last). A lock container
        (a name only one consumer on the engine can create) keeps two consumers from filling it at once; a fill cut
        half-way leaves no marker and is redone by the next consumer that takes the lock.
        """
        key = model.content_key
        if key is None:
            return None
        content, ready, lock_name = (
            f"inference-model-{key}",
            f"inference-model-{key}.ready",
            f"inference-model-{key}.lock",
        )
        deadline = time.monotonic() + self.model_fill_timeout
        while True:
            if self._volume_exists(ready) and self._volume_exists(content):
                return content
            lock = self._take_lock(model, lock_name, key)
            if lock is None:
                if time.monotonic() > deadline:
                    raise RetryLater(f"gave up waiting for another consumer to fill the content of {key}")
                time.sleep(1.0)
                continue
            try:
                if self._volume_exists(ready) and self._volume_exists(content):
                    return content
                self._fill_model_volume(model, key, content, ready, fetch_zip)
                self._remove_old_model_versions(model, key)
                return content
            finally:
                lock.remove(force=True)

    def _take_lock(self, model: ModelInfo, lock_name: str, key: str) -> Container | None:
        """Create the fill lock container, or None while someone else holds it (a stale one is broken)."""
        labels = {
            CONSUMER_LABEL: self.consumer_id,
            ROLE_LABEL: "model-lock",
            MODEL_LABEL: key,
            LOCKED_AT_LABEL: str(int(time.time())),
        }
        try:
            return self._helper(model.container_tag, {}, labels, name=lock_name)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
        try:
            holder = self.client.containers.get(lock_name)
        except docker.errors.NotFound:
            return None
        locked_at = int(holder.labels.get(LOCKED_AT_LABEL, "0") or 0)
        if time.time() - locked_at > self.model_fill_timeout:
            log.warning("breaking the stale fill lock %s (held by %s)", lock_name, holder.labels.get(CONSUMER_LABEL))
            holder.remove(force=True)
        return None

    def _fill_model_volume(
        self, model: ModelInfo, key: str, content: str, ready: str, fetch_zip: Callable[[Path], None]
    ) -> None:
        """(Re)create the content volume, put the model zip's content in, then create the ready marker."""
        for name in (ready, content):
            if self._volume_exists(name):
                log.info("removing the incomplete model volume %s", name)
                self.client.volumes.get(name).remove(force=True)
        labels = {MODEL_LABEL: key, MODEL_ID_LABEL: model.human_readable_id}
        self.client.volumes.create(name=content, labels={**labels, ROLE_LABEL: "model-content"})
        staging = Path(tempfile.mkdtemp(prefix=f"model-{key}-", dir=self.work_dir))
        try:
            zip_path = staging / "model.zip"
            fetch_zip(zip_path)
            try:
                safe_extract(zip_path, staging / "model", self.zip_limits)
            except UnsafeZipError as exc:
                raise ModelFailed(f"the model's zip was rejected: {exc}") from exc
            zip_path.unlink()
            helper = self._helper(
                model.container_tag,
                {content: {"bind": "/model", "mode": "rw"}},
                {CONSUMER_LABEL: self.consumer_id, ROLE_LABEL: "model-fill", MODEL_LABEL: key},
            )
            try:
                if not helper.put_archive("/", folder_as_tar(staging / "model", arc_root="model")):
                    raise DockerUnavailable("docker refused the model's content archive")
            finally:
                helper.remove(force=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.client.volumes.create(name=ready, labels={**labels, ROLE_LABEL: "model-ready"})
        log.info("model content %s is ready", key)

    def _remove_old_model_versions(self, model: ModelInfo, key: str) -> None:
        """Drop this model's content volumes for older zips; one still in use by a running task is left alone."""
        for volume in self.client.volumes.list(filters={"label": f"{MODEL_ID_LABEL}={model.human_readable_id}"}):
            labels = volume.attrs.get("Labels") or {}
            if labels.get(MODEL_LABEL) == key:
                continue
            try:
                volume.remove()
                log.info("removed %s (an older version of %s)", volume.name, model.human_readable_id)
            except docker.errors.APIError as exc:
                log.info("kept %s for now: %s", volume.name, exc.explanation or exc)

    # ---- the run -----------------------------------------------------------------------------------------

    @_docker_call("create the model's container")
    def create_container(
        self, *, task_uid: str, model: ModelInfo, volumes: TaskVolumes, model_volume: str | None
    ) -> Container:
        """Create (not start) the model's sandboxed container; ModelFailed when the engine refuses its settings."""
        try:
            kwargs = model_container_kwargs(
                model=model,
                task_uid=task_uid,
                consumer_id=self.consumer_id,
                input_volume=volumes.input,
                output_volume=volumes.output,
                model_volume=model_volume,
                gpu_device=self.gpu_device,
                pids_limit=self.pids_limit,
                max_log_bytes=self.max_log_bytes,
            )
        except ValueError as exc:
            raise RetryLater(str(exc)) from exc
        image = kwargs.pop("image")
        host_cpus = self._host_cpus()
        if "nano_cpus" in kwargs and host_cpus and kwargs["nano_cpus"] > host_cpus * 1_000_000_000:
            log.info("model %s asks for %s CPUs; this host has %d", model.human_readable_id, model.cpus, host_cpus)
            kwargs["nano_cpus"] = host_cpus * 1_000_000_000
        try:
            with step("container create"):
                container = self.client.containers.create(image, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise ModelFailed(f"image {model.container_tag!r} is not on this host: {exc.explanation}") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 400:
                # The engine refuses the model's settings (e.g. a limit this host cannot give): retrying cannot help.
                raise ModelFailed(f"docker refused the model's container: {exc.explanation or exc}") from exc
            raise
        return container

    @_docker_call("run the model")
    def run(
        self,
        *,
        task_uid: str,
        model: ModelInfo,
        volumes: TaskVolumes,
        model_volume: str | None,
        abort: threading.Event,
        container: Container | None = None,
    ) -> RunResult:
        """Run the model (in container, when already created) until it exits, times out (killed) or is aborted."""
        if container is None:
            container = self.create_container(
                task_uid=task_uid, model=model, volumes=volumes, model_volume=model_volume
            )
        started = time.monotonic()
        try:
            with step("container start"):
                container.start()
        except docker.errors.APIError as exc:
            # The engine refuses to start what the model's image or limits make impossible (bad entrypoint, ...).
            if exc.is_client_error() or "executable file not found" in str(exc) or "OCI runtime" in str(exc):
                raise ModelFailed(f"the model's container could not start: {exc.explanation or exc}") from exc
            raise
        result = RunResult(container_id=container.id or "", exit_code=None)
        deadline = started + model.timeout
        status: dict[str, Any] | None = None
        while True:
            if abort.is_set():
                log.info("stopping task %s's container", task_uid)
                container.stop(timeout=self.stop_timeout)
                result.aborted = True
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.info("task %s ran past its timeout of %s s; killing it", task_uid, model.timeout)
                self._kill(container)
                result.timed_out = True
                break
            try:
                # Returns the moment the container exits; the step only bounds how late a cancel is seen.
                status = container.wait(timeout=max(0.05, min(_WAIT_STEP_SECONDS, remaining)))
                break
            except requests.exceptions.ConnectionError as exc:
                if "timed out" not in str(exc).lower() and "timeout" not in type(exc).__name__.lower():
                    raise
            except requests.exceptions.Timeout:
                continue
        record("container run", time.monotonic() - started)
        if status is None:  # stopped or killed: wait for it to be gone
            with step("container wait"):
                status = container.wait(timeout=max(30, self.stop_timeout + 10))
        result.duration = time.monotonic() - started
        with step("container inspect"):
            container.reload()
        state = container.attrs.get("State") or {}
        result.exit_code = int(status.get("StatusCode", state.get("ExitCode", -1)))
        result.oom_killed = bool(state.get("OOMKilled"))
        with step("logs"):
            result.log_tail, result.log_truncated = self._log_tail(container)
        return result

    def _host_cpus(self) -> int:
        """The number of CPUs of the docker host (0 when unknown), read once."""
        if self._cpus is None:
            self._cpus = int(self.client.info().get("NCPU") or 0)
        return self._cpus

    def _kill(self, container: Container) -> None:
        """Kill a container that may already have exited."""
        try:
            container.kill()
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):
                raise

    def _log_tail(self, container: Container) -> tuple[bytes, bool]:
        """The last `max_log_bytes` of the container's stdout and stderr, streamed, and whether more was cut."""
        kept: collections.deque[bytes] = collections.deque()
        size = 0
        truncated = False
        for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=False):
            kept.append(chunk)
            size += len(chunk)
            while size - len(kept[0]) >= self.max_log_bytes:
                size -= len(kept.popleft())
                truncated = True
        data = b"".join(kept)
        if len(data) > self.max_log_bytes:
            data, truncated = data[-self.max_log_bytes :], True
        return data, truncated

    @_docker_call("collect the output")
    def write_output_zip(self, container_id: str, dest: Path, volumes: TaskVolumes | None = None) -> OutputSummary:
        """Write the stopped container's /output tree into a zip file at dest (from its folder when bind-mounted)."""
        if volumes is not None and volumes.host_dir is not None:
            try:
                return folder_to_zip(Path(volumes.output), dest)
            except PermissionError as exc:
                log.info("cannot read the output folder (%s); reading it through the engine", exc)
        stream, _ = self.client.api.get_archive(container_id, "/output", chunk_size=1024 * 1024)
        return tar_to_zip(stream, dest, strip="output")

    # ---- cleanup -----------------------------------------------------------------------------------------

    def cleanup_task(self, task_uid: str) -> int:
        """Remove every container and volume this consumer made for the task (any path: success, failure, cancel).

        Only this consumer's: a task taken over by another consumer keeps that consumer's containers.
        """
        removed = self._remove_labelled(f"{TASK_LABEL}={task_uid}", f"{CONSUMER_LABEL}={self.consumer_id}")
        for folder in self._bind_root.glob(f"task-{_path_safe(task_uid)}-*"):
            _remove_tree(folder)
            removed += 1
        return removed

    def cleanup_leftovers(self) -> int:
        """Remove what a crashed run of this consumer left: its task containers and volumes, its fill locks."""
        removed = self._remove_labelled(f"{CONSUMER_LABEL}={self.consumer_id}")
        if self._bind_root.is_dir():
            for folder in self._bind_root.iterdir():
                _remove_tree(folder)
                removed += 1
        return removed

    def _remove_labelled(self, *labels: str) -> int:
        """Force-remove containers, then volumes, carrying all labels; count them; keep going past single failures."""
        removed = 0
        label = list(labels)
        try:
            containers = self.client.containers.list(all=True, sparse=True, filters={"label": label})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(f"docker failed while listing containers to clean up: {exc}") from exc
        for container in containers:
            try:
                container.remove(force=True, v=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log.warning("could not remove container %s: %s", container.short_id, exc)
        try:
            volumes = self.client.volumes.list(filters={"label": label})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(f"docker failed while listing volumes to clean up: {exc}") from exc
        for volume in volumes:
            if MODEL_LABEL in (volume.attrs.get("Labels") or {}):
                continue  # model content is kept for later tasks
            try:
                volume.remove(force=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log.warning("could not remove volume %s: %s", volume.name, exc)
        return removed
