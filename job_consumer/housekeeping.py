"""What a consumer does besides tasks, from its main loop: GPU checks, its heartbeat, and reaping orphans."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from common.messages import GPU_QUEUE
from job_consumer.containers import Engine
from job_consumer.errors import ConsumerError
from job_consumer.private_api import PrivateApiClient
from job_consumer.provenance import GpuInfo, query_gpu
from job_consumer.sandbox import (
    ATTEMPT_LABEL,
    DEADLINE_LABEL,
    INSTANCE_LABEL,
    ROLE_LABEL,
    SCOPE_LABEL,
    TASK_LABEL,
    gpu_probe_kwargs,
)
from job_consumer.workspace import Workspace, remove_tree

__all__ = ["Housekeeping"]

log = logging.getLogger(__name__)


class Housekeeping:
    """The consumer instance's state the private API and the queues see; `tick()` does what is due."""

    def __init__(
        self,
        *,
        api: PrivateApiClient,
        engine: Engine,
        workspace: Workspace,
        queues: list[str],
        scope: str,
        gpu_device: str | None,
        gpu_probe_image: str = "busybox",
        heartbeat_seconds: float = 10.0,
        reprobe_seconds: float = 60.0,
        reap_seconds: float = 60.0,
    ) -> None:
        self.api = api
        self.engine = engine
        self.workspace = workspace
        self.queues = list(queues)
        self.scope = scope
        self.gpu_device = gpu_device
        self.gpu_probe_image = gpu_probe_image
        self.heartbeat_seconds = heartbeat_seconds
        self.reprobe_seconds = reprobe_seconds
        self.reap_seconds = reap_seconds
        self.gpu_usable: bool | None = None
        self.gpu_reason: str | None = None
        self.gpu_info: GpuInfo | None = None  # asked once the GPU is usable, for the tasks' provenance
        self._next_probe = 0.0
        self._next_heartbeat = 0.0
        self._next_reap = 0.0
        self._said_missing: set[str] = set()

    def active_queues(self) -> list[str]:
        """The queues to consume now: without the GPU queue while the GPU is unusable."""
        if self.gpu_device is not None and not self.gpu_usable:
            return [q for q in self.queues if q != GPU_QUEUE]
        return list(self.queues)

    def tick(self) -> None:
        """Do whatever is due: a GPU probe, a heartbeat, a reaping round (each failure is logged, never raised)."""
        now = time.monotonic()
        steps: list[Callable[[], object]] = []
        if self.gpu_device is not None and not self.gpu_usable and now >= self._next_probe:
            steps.append(self.probe_gpu)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_seconds
            steps.append(self.heartbeat)
        if now >= self._next_reap:
            self._next_reap = now + self.reap_seconds
            steps.append(self.reap)
        for step in steps:
            try:
                step()
            except Exception:  # housekeeping must never stop the consumer (it also runs while a task does)
                log.exception("housekeeping step %s failed; tried again later", step.__name__)

    # ---- GPU ---------------------------------------------------------------------------------------------

    def probe_gpu(self) -> None:
        """Check the pinned GPU with a tiny container; while it fails the GPU queue is not consumed."""
        assert self.gpu_device is not None
        self._next_probe = time.monotonic() + self.reprobe_seconds
        labels = {SCOPE_LABEL: self.scope, INSTANCE_LABEL: self.api.instance_id}
        reason = self.engine.probe_gpu(
            gpu_probe_kwargs(image=self.gpu_probe_image, gpu_device=self.gpu_device, labels=labels)
        )
        was = self.gpu_usable
        self.gpu_usable, self.gpu_reason = reason is None, reason
        if reason is not None:
            log.warning(
                "GPU %s is unusable, so this consumer takes no GPU tasks (next check in %.0f s): %s",
                self.gpu_device,
                self.reprobe_seconds,
                reason,
            )
        elif was is not True:
            log.info("GPU %s is usable", self.gpu_device)
        if reason is None and self.gpu_info is None:
            image = self.gpu_probe_image
            self.gpu_info = query_gpu(self.gpu_device, engine=self.engine, probe_image=image, labels=labels)
        if was != self.gpu_usable:
            self._next_heartbeat = 0.0  # tell the private API at once

    def gpu_failed(self, reason: str) -> None:
        """A task hit a GPU error: stop taking GPU tasks and check the GPU again at the next tick (any thread)."""
        self.gpu_usable, self.gpu_reason = False, reason
        self._next_probe = 0.0
        log.warning("GPU %s failed a task; checking it again: %s", self.gpu_device, reason)

    # ---- presence ----------------------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Tell the private API this instance is alive, what it consumes and what state its GPU and disk are in."""
        payload = {
            "host": socket.gethostname(),
            "queues": self.active_queues(),
            "gpu_device": self.gpu_device,
            "gpu_usable": self.gpu_usable if self.gpu_device is not None else None,
            "gpu_reason": self.gpu_reason,
            "free_disk_bytes": self.workspace.free_bytes(),
        }
        try:
            if self.api.consumer_heartbeat(payload) is None:
                self._missing("POST /internal/consumers/{id}/heartbeat")
        except ConsumerError as exc:
            log.info("consumer heartbeat failed: %s", exc)

    def goodbye(self) -> None:
        """Tell the private API this instance stops."""
        self.api.consumer_gone()

    def _missing(self, route: str) -> None:
        """Say once that the private API is older than this consumer."""
        if route not in self._said_missing:
            self._said_missing.add(route)
            log.info("the private API has no %s yet; skipping it", route)

    # ---- orphans -----------------------------------------------------------------------------------------

    def reap(self) -> int:
        """Remove this deployment's model containers and task folders whose lease is not live; returns how many."""
        try:
            return self._reap()
        except ConsumerError as exc:
            log.info("reaping orphans failed (tried again later): %s", exc)
            return 0

    def _reap(self) -> int:
        """reap()'s body."""
        removed = 0
        now = time.time()
        leases: list[tuple[str, str, int]] = []
        targets: list[str | Path] = []
        for container in self.engine.list(f"{SCOPE_LABEL}={self.scope}", f"{ROLE_LABEL}=model"):
            labels = container.attrs.get("Labels") or {}
            deadline = int(labels.get(DEADLINE_LABEL, "0") or 0)
            if deadline and now > deadline:
                log.warning("removing the container of task %s: past its deadline", labels.get(TASK_LABEL))
                removed += self.engine.remove(container.id or "")
                continue
            attempt = labels.get(ATTEMPT_LABEL, "")
            if labels.get(TASK_LABEL) and labels.get(INSTANCE_LABEL) and attempt.isdigit():
                leases.append((labels[TASK_LABEL], labels[INSTANCE_LABEL], int(attempt)))
                targets.append(container.id or "")
        for instance, uid, attempt, folder in self.workspace.task_folders_of_others():
            leases.append((uid, instance, attempt))
            targets.append(folder)
        if not leases:
            return removed
        live = self.api.leases_check(leases)
        if live is None:
            self._missing("POST /internal/leases/check")
            return removed
        for (uid, instance, _attempt), target, alive in zip(leases, targets, live, strict=True):
            if alive:
                continue
            log.info("removing an orphan of task %s (instance %s holds no live lease)", uid, instance)
            if isinstance(target, str):
                removed += self.engine.remove(target)
            else:
                remove_tree(target)
                removed += 1
        return removed
