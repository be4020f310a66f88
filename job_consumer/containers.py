"""Run: everything the consumer asks of the docker engine (images, the model's container, probes, removal)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.utils import parse_repository_tag

from job_consumer.engine_errors import engine_call, exec_error, gpu_error, host_error
from job_consumer.errors import DockerUnavailable, GpuUnusable, ModelFailed, RetryLater

__all__ = ["Engine", "ImageRef", "RunResult", "gpu_error"]

log = logging.getLogger(__name__)
_WAIT_STEP_SECONDS = 1.0


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


@dataclass(frozen=True)
class ImageRef:
    """An image as resolved for one task: the tag asked for, the id that runs, its registry digests."""

    tag: str
    id: str
    repo_digests: list[str] = field(default_factory=list)


class Engine:
    """The docker engine as the consumer uses it."""

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        pull_missing_images: bool = True,
        stop_timeout: int = 5,
        max_log_bytes: int = 1024 * 1024,
        image_cache_seconds: float = 60.0,
    ) -> None:
        self.client = client
        self.pull_missing_images = pull_missing_images
        self.stop_timeout = stop_timeout
        self.max_log_bytes = max_log_bytes
        self.image_cache_seconds = image_cache_seconds
        self._cpus: int | None = None
        self._host_name: str | None = None
        # Image tags found on this host lately, with when: one inspect per tag and minute, not one per task.
        self._images_seen: dict[str, float] = {}

    @engine_call("find the model's image")
    def ensure_image(self, tag: str) -> None:
        """Make sure the image is here, pulling it if allowed; ModelFailed when it does not exist or may not be had."""
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
            message = str(exc.explanation or exc)
            lowered = message.lower()
            missing = any(m in lowered for m in ("not found", "denied", "manifest unknown", "invalid reference"))
            if exc.status_code == 429 or "toomanyrequests" in lowered or (exc.is_server_error() and not missing):
                # Rate limits, registry 5xx, an unreachable registry: the host's problem, tried again later.
                raise DockerUnavailable(f"the registry failed while pulling {tag!r}: {message}") from exc
            raise ModelFailed(f"image {tag!r} is not on this host and could not be pulled: {message}") from exc
        self._images_seen[tag] = time.monotonic()

    @engine_call("resolve the model's image")
    def resolve_image(self, tag: str) -> ImageRef:
        """The image the tag names now (pulled if missing and allowed): the task runs this id, whatever the tag does."""
        try:
            image = self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            self._images_seen.pop(tag, None)
            self.ensure_image(tag)
            try:
                image = self.client.images.get(tag)
            except docker.errors.ImageNotFound as exc:  # removed or re-tagged away right after the pull
                raise DockerUnavailable(f"image {tag!r} went away right after it was pulled") from exc
        digests = image.attrs.get("RepoDigests") or []
        return ImageRef(tag=tag, id=str(image.id), repo_digests=[str(d) for d in digests])

    def _info(self) -> None:
        info = self.client.info()
        self._cpus = int(info.get("NCPU") or 0)
        self._host_name = str(info.get("Name") or "")

    def host_cpus(self) -> int:
        """The number of CPUs of the docker host (0 when unknown), read once."""
        if self._cpus is None:
            self._info()
        assert self._cpus is not None
        return self._cpus

    def host_name(self) -> str:
        """The docker host's name (where the model containers run; "" when unknown), read once."""
        if self._host_name is None:
            try:
                self._info()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                log.warning("could not ask docker for its host name: %s", exc)
                return ""
        return self._host_name or ""

    @engine_call("create the model's container")
    def create(self, kwargs: dict[str, Any]) -> Container:
        """Create (not start) a container; ModelFailed when the engine refuses the model's settings."""
        kwargs = dict(kwargs)
        image = kwargs.pop("image")
        cpus = self.host_cpus()
        if "nano_cpus" in kwargs and cpus and kwargs["nano_cpus"] > cpus * 1_000_000_000:
            log.info("the model asks for %.1f CPUs; this host has %d", kwargs["nano_cpus"] / 1e9, cpus)
            kwargs["nano_cpus"] = cpus * 1_000_000_000
        try:
            return self.client.containers.create(image, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise ModelFailed(f"image {image!r} is not on this host: {exc.explanation}") from exc
        except docker.errors.APIError as exc:
            message = str(exc.explanation or exc)
            if gpu_error(message):
                raise GpuUnusable(f"the GPU cannot be used: {message}") from exc
            if host_error(message):
                raise DockerUnavailable(f"the engine could not create the model's container: {message}") from exc
            if exc.status_code == 400:
                # The engine refuses the model's settings (e.g. a limit this host cannot give): retrying cannot help.
                raise ModelFailed(f"docker refused the model's container: {message}") from exc
            raise

    @engine_call("start the model's container")
    def start(self, container: Container) -> float:
        """Start a created container; returns when (monotonic). GPU errors are GpuUnusable, image errors ModelFailed."""
        try:
            container.start()
        except docker.errors.APIError as exc:
            message = str(exc.explanation or exc)
            if gpu_error(message):
                raise GpuUnusable(f"the GPU cannot be used: {message}") from exc
            if host_error(message):
                raise DockerUnavailable(f"the engine could not start the model's container: {message}") from exc
            # The engine refuses to start what the model's image or limits make impossible (bad entrypoint, ...).
            if exc.is_client_error() or exec_error(message) or "OCI runtime" in message:
                raise ModelFailed(f"the model's container could not start: {message}") from exc
            raise
        return time.monotonic()

    @engine_call("run the model")
    def wait(self, container: Container, *, timeout: float, abort: threading.Event, started: float) -> RunResult:
        """Wait until the container exits, runs past timeout (killed) or abort is set (stopped); read its end."""
        result = RunResult(container_id=container.id or "", exit_code=None)
        deadline = started + timeout
        status: dict[str, Any] | None = None
        while status is None:
            if abort.is_set():
                container.stop(timeout=self.stop_timeout)
                result.aborted = True
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill(container)
                result.timed_out = True
                break
            try:
                # Returns the moment the container exits; the step only bounds how late a cancel is seen.
                status = container.wait(timeout=max(0.05, min(_WAIT_STEP_SECONDS, remaining)))
            except requests.exceptions.ConnectionError as exc:
                if "timed out" not in str(exc).lower() and "timeout" not in type(exc).__name__.lower():
                    raise
            except requests.exceptions.Timeout:
                continue
        if status is None:  # stopped or killed: wait for it to be gone
            status = container.wait(timeout=max(30, self.stop_timeout + 10))
        result.duration = time.monotonic() - started
        container.reload()
        state = container.attrs.get("State") or {}
        result.exit_code = int(status.get("StatusCode", state.get("ExitCode", -1)))
        result.oom_killed = bool(state.get("OOMKilled"))
        result.log_tail, result.log_truncated = self._log_tail(container)
        return result

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

    def probe_gpu(self, kwargs: dict[str, Any]) -> str | None:
        """Run the GPU probe container; None when the GPU works, else why not."""
        try:
            code, _output = self.run_once(kwargs)
            return None if code == 0 else f"the GPU probe exited with code {code}"
        except (ModelFailed, RetryLater) as exc:
            return str(exc)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            return f"the GPU probe failed: {exc}"

    def run_once(self, kwargs: dict[str, Any], timeout: float = 60) -> tuple[int, bytes]:
        """Run a throw-away container to its end; its exit code and stdout. It is removed whatever happens."""
        container: Container | None = None
        try:
            self.ensure_image(kwargs["image"])
            container = self.create(kwargs)
            self.start(container)
            code = int(container.wait(timeout=timeout).get("StatusCode", -1))
            return code, bytes(container.logs(stdout=True, stderr=False))
        finally:
            if container is not None:
                self.remove(container.id or "")

    def list(self, *labels: str) -> list[Container]:
        """Containers (running or not, sparse: labels in attrs["Labels"]) carrying all labels (`key=value`)."""
        try:
            return list(self.client.containers.list(all=True, sparse=True, filters={"label": list(labels)}))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(f"docker failed while listing containers: {exc}") from exc

    def remove(self, container_id: str) -> bool:
        """Force-remove a container; False (logged) when that failed, True when it is gone."""
        try:
            self.client.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            log.warning("could not remove container %s: %s", container_id[:12], exc)
            return False
        return True
