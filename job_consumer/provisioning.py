"""Provision one attempt: the image resolved to an id, the model's content, the input, the created container."""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from docker.models.containers import Container

from job_consumer.containers import Engine
from job_consumer.errors import DiskFull, LeaseLost, RetryLater
from job_consumer.private_api import PrivateApiClient
from job_consumer.provenance import Record, applied_limits
from job_consumer.sandbox import Sandbox, TaskRef, model_container_kwargs
from job_consumer.schemas import Claim
from job_consumer.workspace import TaskDirs, Workspace

__all__ = ["Held", "Provisioning", "Settle", "Shutdown", "TaskControl", "disk"]

log = logging.getLogger("job_consumer.task_runner")

# Time after its timeout that a model container may still exist before any consumer removes it as an orphan.
_DEADLINE_SLACK_SECONDS = 120


class Settle(enum.Enum):
    """What happens to the message once the task is done with it."""

    ACK = "ack"  # final state stored, task released, or nothing to do
    REQUEUE = "requeue"  # the private API stayed unreachable for the whole retry window: give the message back


@dataclass
class TaskControl:
    """Shared between the task thread, its heartbeat thread and the main loop."""

    abort: threading.Event = field(default_factory=threading.Event)  # stop the container now
    lost: threading.Event = field(default_factory=threading.Event)  # cancelled or taken over
    shutdown: threading.Event = field(default_factory=threading.Event)  # the grace period after SIGTERM is over
    on_settled: Callable[[Settle], None] = lambda settle: None  # the message may be settled (cleanup follows)


@dataclass
class Held:
    """What the attempt made so far, for its cleanup."""

    dirs: TaskDirs | None = None
    container: Container | None = None
    model_hold: IO[str] | None = None


class Shutdown(Exception):
    """The grace period after SIGTERM ran out while the task ran."""


@contextlib.contextmanager
def disk(what: str) -> Iterator[None]:
    """A full WORK_DIR while doing `what` is the host's problem (DiskFull), not the model's."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"no space left in WORK_DIR while trying to {what}") from exc
        raise


class Provisioning:
    """The provisioning steps of TaskRunner (which sets these attributes)."""

    api: PrivateApiClient
    engine: Engine
    workspace: Workspace
    sandbox: Sandbox
    scope: str

    @staticmethod
    def _check(control: TaskControl) -> None:
        """Raise when the task must stop between steps."""
        if control.lost.is_set():
            raise LeaseLost("it was cancelled or taken over")
        if control.shutdown.is_set():
            raise Shutdown()

    def _provision(self, claim: Claim, control: TaskControl, held: Held, record: Record) -> tuple[TaskDirs, Container]:
        """Image, model content, the task's folders with its input, and the created (not started) container."""
        uid, attempt, model = claim.task.uid, claim.task.attempt, claim.model
        self.workspace.check_free_space()
        # Resolved once: the container is created from this id, so a re-tag meanwhile changes nothing.
        record.image = image = self.engine.resolve_image(model.container_tag)
        with disk("fill the model's content"):
            model_dir = self.workspace.model_dir(
                model,
                lambda dest: self.api.download_model_zip(
                    model.human_readable_id, dest, expected_sha256=model.zip_sha256 or ""
                ),
            )
        held.model_hold = self.workspace.hold_model(model)
        if model_dir is not None and not model_dir.is_dir():
            raise RetryLater(f"the content of model {model.human_readable_id!r} went away while it was taken")
        for key, _folder in self.workspace.old_model_versions(model, keep=claim.model_zips_needed):
            self.workspace.remove_model_version(key)
        self._check(control)
        dirs = self.workspace.task_dirs(uid, attempt)
        held.dirs = dirs
        with disk("download the input"):
            record.input_sha256 = self.api.download_input(uid, dirs.input_zip)
        self._check(control)
        self.workspace.extract_input(dirs)
        self._check(control)
        task = TaskRef(
            uid=uid,
            attempt=attempt,
            instance_id=self.api.instance_id,
            consumer_name=self.api.consumer_name,
            scope=self.scope,
            deadline=int(time.time() + model.timeout + _DEADLINE_SLACK_SECONDS),
        )
        try:
            kwargs = model_container_kwargs(
                model=model,
                task=task,
                input_dir=dirs.input,
                output_dir=dirs.output,
                model_dir=model_dir,
                sandbox=self.sandbox,
            )
        except ValueError as exc:
            raise RetryLater(str(exc)) from exc
        kwargs["image"] = image.id
        self._remove_earlier_runs(task)
        container = self.engine.create(kwargs)
        held.container = container
        record.limits = applied_limits(container, kwargs, model.timeout)
        return dirs, container

    def _remove_earlier_runs(self, task: TaskRef) -> None:
        """Remove a crashed consumer's container of this task: stale now, it would share the GPU with this run."""
        for old in self.engine.list(*task.task_filters()):
            if task.is_other_run(old.attrs.get("Labels") or {}):
                log.warning("removing container %s of an earlier run of task %s", (old.id or "")[:12], task.uid)
                self.engine.remove(old.id or "")
