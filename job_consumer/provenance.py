"""Provenance: exactly what produced a task's result (image id, model version, inputs, host, GPU, limits, timings).

The runner fills one Record per attempt as it goes; its dict goes with the final state to the private API, which
shows it in the task's status under `provenance`.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from docker.models.containers import Container

from job_consumer.containers import Engine, ImageRef
from job_consumer.sandbox import gpu_probe_kwargs
from job_consumer.schemas import Claim

__all__ = ["GPU_QUERY", "GpuInfo", "Record", "applied_limits", "parse_gpu_query", "query_gpu"]

log = logging.getLogger(__name__)

GPU_QUERY = ["nvidia-smi", "--query-gpu=name,uuid,driver_version", "--format=csv,noheader"]


@dataclass(frozen=True)
class GpuInfo:
    """The GPU a consumer is pinned to, as nvidia-smi names it."""

    name: str
    uuid: str
    driver_version: str

    def as_dict(self, device: str) -> dict[str, str]:
        """The GPU as provenance shows it, with the device the consumer was given (index or UUID)."""
        return {"device": device, "name": self.name, "uuid": self.uuid, "driver_version": self.driver_version}


def parse_gpu_query(text: str) -> GpuInfo | None:
    """The first GPU in the output of GPU_QUERY (`name, uuid, driver`); None when it is not that."""
    for line in text.splitlines():
        parts = [part.strip() for part in line.rsplit(",", 2)]
        if len(parts) == 3 and all(parts) and parts[1].startswith(("GPU-", "MIG-")):
            return GpuInfo(name=parts[0], uuid=parts[1], driver_version=parts[2])
    return None


def query_gpu(
    device: str, *, engine: Engine | None = None, probe_image: str | None = None, labels: dict[str, str] | None = None
) -> GpuInfo | None:
    """Ask nvidia-smi about the pinned GPU: here when it is installed, else in a probe container given that GPU."""
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run([*GPU_QUERY, "-i", device], capture_output=True, text=True, timeout=30, check=False)
            if done.returncode == 0 and (found := parse_gpu_query(done.stdout)):
                return found
            log.info("nvidia-smi could not name GPU %s: %s", device, (done.stderr or done.stdout).strip()[:300])
        except (OSError, subprocess.SubprocessError) as exc:
            log.info("nvidia-smi failed: %s", exc)
    if engine is None or not probe_image:
        return None
    # The container sees only the pinned GPU, so no -i: the host's index means nothing in there.
    kwargs = gpu_probe_kwargs(
        image=probe_image, gpu_device=device, labels=labels or {}, command=GPU_QUERY, utility=True
    )
    try:
        code, output = engine.run_once(kwargs)
    except Exception as exc:  # provenance is worth less than the task: never fail for it
        log.info("could not ask nvidia-smi about GPU %s in a container: %s", device, exc)
        return None
    return parse_gpu_query(output.decode("utf-8", "replace")) if code == 0 else None


def _size(value: Any) -> int | None:
    return int(value) if value else None


def applied_limits(container: Container, kwargs: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The limits the engine holds for the created container (what it applies), with the sizes as asked."""
    host = container.attrs.get("HostConfig") or {}
    config = container.attrs.get("Config") or {}
    nano = host.get("NanoCpus") or kwargs.get("nano_cpus")
    return {
        "mem_limit": kwargs.get("mem_limit"),
        "memory_bytes": _size(host.get("Memory")),
        "memory_swap_bytes": _size(host.get("MemorySwap")),
        "cpus": nano / 1e9 if nano else None,
        "shm_size": kwargs.get("shm_size"),
        "shm_bytes": _size(host.get("ShmSize")),
        "network": host.get("NetworkMode") or kwargs.get("network_mode"),
        "user": config.get("User") or kwargs.get("user"),
        "pids_limit": host.get("PidsLimit") or kwargs.get("pids_limit"),
        "timeout": timeout,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Record:
    """The provenance of one attempt, filled in by the runner as the attempt goes."""

    claim: Claim
    consumer_name: str
    instance_id: str
    host: str
    gpu: dict[str, str] | None = None
    image: ImageRef | None = None
    input_sha256: str | None = None
    output_sha256: str | None = None
    limits: dict[str, Any] | None = None
    exit_code: int | None = None
    _phases: list[tuple[str, str, float]] = field(default_factory=list)  # name, started (ISO), started (monotonic)

    def enter(self, phase: str) -> None:
        """The attempt enters a phase (preparing, running, uploading) now."""
        self._phases.append((phase, _now(), time.monotonic()))

    def timings(self) -> dict[str, dict[str, Any]]:
        """Each phase's start and seconds (the last one's up to now); `queued` from the task's own timestamps."""
        out: dict[str, dict[str, Any]] = {}
        task = self.claim.task
        if task.created_at is not None and task.started_at is not None:
            queued = (task.started_at - task.created_at).total_seconds()
            out["queued"] = {"started_at": task.created_at.isoformat(), "seconds": round(max(0.0, queued), 3)}
        ends = [started for _name, _at, started in self._phases[1:]] + [time.monotonic()]
        for (name, at, started), ended in zip(self._phases, ends, strict=True):
            out[name] = {"started_at": at, "seconds": round(ended - started, 3)}
        return out

    def as_dict(self) -> dict[str, Any]:
        """The provenance as the status shows it."""
        model, task = self.claim.model, self.claim.task
        image = self.image
        return {
            "image": {
                "tag": model.container_tag,
                "id": image.id if image else None,
                "repo_digests": image.repo_digests if image else [],
            },
            "model": {
                "human_readable_id": model.human_readable_id,
                "version": task.model_version if task.model_version is not None else model.version,
                "zip_sha256": model.zip_sha256 if model.model_available else None,
            },
            "input_sha256": self.input_sha256,
            "output_sha256": self.output_sha256,
            "consumer": {"name": self.consumer_name, "instance_id": self.instance_id, "host": self.host},
            "attempt": task.attempt,
            "gpu": self.gpu,
            "limits": self.limits,
            "exit_code": self.exit_code,
            "timings": self.timings(),
        }
