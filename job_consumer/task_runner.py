"""One claimed task, start to end: provision, run, collect, clean up; phase timings come back on the result."""

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

from job_consumer.containers import Engine, RunResult
from job_consumer.errors import DiskFull, GpuUnusable, LeaseLost, ModelFailed, PrivateApiError, RetryLater
from job_consumer.outputs import OutputTooLarge, folder_to_zip
from job_consumer.private_api import PrivateApiClient
from job_consumer.sandbox import Sandbox, TaskRef, model_container_kwargs
from job_consumer.schemas import Claim, ModelInfo
from job_consumer.workspace import TaskDirs, Workspace

__all__ = ["Settle", "TaskControl", "TaskResult", "TaskRunner", "failure_reason"]

log = logging.getLogger(__name__)

_LOG_TAIL_IN_REASON = 1500
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
class TaskResult:
    """How a task ended for this consumer, and where its time went (seconds per phase)."""

    uid: str
    outcome: str
    settle: Settle
    phases: dict[str, float] = field(default_factory=dict)
    # Why it failed or was released (for the metrics' reason classes), and whether the host was to blame.
    reason: str | None = None
    infrastructure: bool = False


@dataclass
class _Held:
    """What the attempt made so far, for its cleanup."""

    dirs: TaskDirs | None = None
    container: Container | None = None
    model_hold: IO[str] | None = None


class _Shutdown(Exception):
    """The grace period after SIGTERM ran out while the task ran."""


def failure_reason(model: ModelInfo, result: RunResult) -> str | None:
    """The user-facing reason a finished run failed, or None when it succeeded."""
    if result.timed_out:
        return f"timed out after {model.timeout:g} s"
    if result.oom_killed or result.exit_code == 137:
        return f"killed: out of memory (limit {model.mem_limit or 'default'})"
    if result.exit_code == 135:
        return (
            "killed by a bus error (exit 135): usually /dev/shm is too small for the model's data loaders; "
            f"raise the model's shm_size (now {model.shm_size or 'default'})"
        )
    if result.exit_code != 0:
        tail = result.log_tail[-_LOG_TAIL_IN_REASON:].decode("utf-8", "replace").strip()
        return f"exited with code {result.exit_code}" + (f"; log tail:\n{tail}" if tail else "")
    return None


@contextlib.contextmanager
def _disk(what: str) -> Iterator[None]:
    """A full WORK_DIR while doing `what` is the host's problem (DiskFull), not the model's."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"no space left in WORK_DIR while trying to {what}") from exc
        raise


class TaskRunner:
    """Runs claimed tasks for one consumer instance."""

    def __init__(
        self,
        *,
        api: PrivateApiClient,
        engine: Engine,
        workspace: Workspace,
        sandbox: Sandbox,
        scope: str,
        heartbeat_seconds: float = 3.0,
        on_gpu_error: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.api = api
        self.engine = engine
        self.workspace = workspace
        self.sandbox = sandbox
        self.scope = scope
        self.heartbeat_seconds = heartbeat_seconds
        self.on_gpu_error = on_gpu_error

    def run(self, claim: Claim, control: TaskControl) -> TaskResult:
        """Run one claimed task to a stored final state (or a release); never raises."""
        uid, attempt = claim.task.uid, claim.task.attempt
        result = TaskResult(uid=uid, outcome="", settle=Settle.ACK)
        log.info("running task %s (model %s, attempt %d)", uid, claim.model.human_readable_id, attempt)
        done = threading.Event()
        beats = threading.Thread(
            target=self._heartbeat, args=(uid, attempt, control, done), name=f"heartbeat-{uid}", daemon=True
        )
        beats.start()
        held = _Held()
        try:
            result.outcome, result.settle = self._steps(claim, control, result, held)
        except LeaseLost as exc:
            log.info("task %s: %s; nothing is stored", uid, exc)
            result.outcome = "lost"
        except ModelFailed as exc:
            result.reason = exc.reason
            result.outcome, result.settle = self._finish(claim, "failed", exc.reason, exc.exit_code)
        except _Shutdown:
            result.outcome, result.settle = self._release(claim, "the consumer shut down mid-task", infra=False)
        except RetryLater as exc:
            if isinstance(exc, GpuUnusable):
                self.on_gpu_error(str(exc))
            log.warning("task %s hit an infrastructure problem: %s", uid, exc)
            result.reason, result.infrastructure = str(exc), True
            result.outcome, result.settle = self._release(claim, str(exc), infra=True)
        except Exception as exc:
            log.exception("task %s failed unexpectedly", uid)
            result.reason, result.infrastructure = f"consumer error: {exc!r}", True
            result.outcome, result.settle = self._release(claim, f"consumer error: {exc!r}", infra=True)
        finally:
            done.set()
            beats.join(5)
            # The message is settled now; the cleanup below runs meanwhile (nothing of it is needed any more).
            control.on_settled(result.settle)
            started = time.monotonic()
            self._clean_up(held)
            result.phases["cleanup"] = time.monotonic() - started
        phases = ", ".join(f"{name} {seconds:.3f}" for name, seconds in result.phases.items())
        log.info("task %s %s", uid, result.outcome)
        log.debug("task %s timings: %s; total %.3f s", uid, phases, sum(result.phases.values()))
        return result

    def _heartbeat(self, uid: str, attempt: int, control: TaskControl, done: threading.Event) -> None:
        """Renew the lease every few seconds; a cancel or a lost lease aborts the task."""
        while not done.wait(self.heartbeat_seconds):
            try:
                self.api.heartbeat(uid, attempt)
            except LeaseLost as exc:
                log.info("%s: stopping it", exc)
                control.lost.set()
                control.abort.set()
                return
            except PrivateApiError as exc:
                log.warning("heartbeat for %s failed: %s", uid, exc)
            except Exception:  # an odd answer must not end the heartbeats: the lease would run out mid-task
                log.exception("heartbeat for %s failed", uid)

    @staticmethod
    def _check(control: TaskControl) -> None:
        """Raise when the task must stop between steps."""
        if control.lost.is_set():
            raise LeaseLost("it was cancelled or taken over")
        if control.shutdown.is_set():
            raise _Shutdown()

    def _steps(self, claim: Claim, control: TaskControl, result: TaskResult, held: _Held) -> tuple[str, Settle]:
        """Provision, run, collect; raises the deliberate exceptions for the other outcomes."""
        uid, attempt, model = claim.task.uid, claim.task.attempt, claim.model
        phases = result.phases
        started = time.monotonic()
        dirs, container = self._provision(claim, control, held)
        phases["provision"] = time.monotonic() - started
        started = self.engine.start(container)
        run = self.engine.wait(container, timeout=model.timeout, abort=control.abort, started=started)
        phases["run"] = run.duration
        self._check(control)
        if run.aborted:
            raise LeaseLost("its container was stopped")
        started = time.monotonic()
        log_text = (b"[... earlier output cut ...]\n" if run.log_truncated else b"") + run.log_tail
        try:
            self.api.upload_logs(uid, attempt, log_text)
        except PrivateApiError as exc:  # the log is worth less than the result: go on to the output and finish
            log.warning("the log of task %s was not stored: %s", uid, exc)
        reason = failure_reason(model, run)
        if reason is None:
            try:
                with _disk("write the output zip"):
                    summary = folder_to_zip(dirs.output, dirs.output_zip, max_bytes=model.max_output_bytes)
            except OutputTooLarge as exc:
                raise ModelFailed(f"{exc}; nothing was stored", exit_code=run.exit_code) from exc
            self._check(control)
            self.api.upload_output(uid, attempt, dirs.output_zip)
            log.info("task %s: %d files, %d bytes of output", uid, summary.files, summary.bytes)
        result.reason = reason
        outcome = self._finish(claim, "failed" if reason else "finished", reason, run.exit_code)
        phases["collect"] = time.monotonic() - started
        return outcome

    def _provision(self, claim: Claim, control: TaskControl, held: _Held) -> tuple[TaskDirs, Container]:
        """Image, model content, the task's folders with its input, and the created (not started) container."""
        uid, attempt, model = claim.task.uid, claim.task.attempt, claim.model
        self.workspace.check_free_space()
        self.engine.ensure_image(model.container_tag)
        with _disk("fill the model's content"):
            model_dir = self.workspace.model_dir(
                model,
                lambda dest: self.api.download_model_zip(
                    model.human_readable_id, dest, expected_sha256=model.zip_sha256 or ""
                ),
            )
        held.model_hold = self.workspace.hold_model(model)
        if model_dir is not None and not model_dir.is_dir():
            raise RetryLater(f"the content of model {model.human_readable_id!r} went away while it was taken")
        for key, _folder in self.workspace.old_model_versions(model):
            self.workspace.remove_model_version(key)
        self._check(control)
        dirs = self.workspace.task_dirs(uid, attempt)
        held.dirs = dirs
        with _disk("download the input"):
            self.api.download_input(uid, dirs.input_zip)
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
        self._remove_earlier_runs(task)
        container = self.engine.create(kwargs)
        held.container = container
        return dirs, container

    def _remove_earlier_runs(self, task: TaskRef) -> None:
        """Remove a crashed consumer's container of this task: stale now, it would share the GPU with this run."""
        for old in self.engine.list(*task.task_filters()):
            if task.is_other_run(old.attrs.get("Labels") or {}):
                log.warning("removing container %s of an earlier run of task %s", (old.id or "")[:12], task.uid)
                self.engine.remove(old.id or "")

    def _finish(self, claim: Claim, status: str, reason: str | None, exit_code: int | None) -> tuple[str, Settle]:
        """Store the final state; ACK once stored or once the task is no longer ours."""
        if reason:
            log.info("task %s failed: %s", claim.task.uid, reason.splitlines()[0])
        try:
            self.api.finish(claim.task.uid, claim.task.attempt, status=status, reason=reason, exit_code=exit_code)
        except PrivateApiError as exc:
            log.error("storing the final state of %s failed for the whole retry window: %s", claim.task.uid, exc)
            return "unreachable", Settle.REQUEUE
        return status, Settle.ACK

    def _release(self, claim: Claim, reason: str, *, infra: bool) -> tuple[str, Settle]:
        """Give the task back; the private API republishes it, so the message is acknowledged."""
        try:
            self.api.release(claim.task.uid, claim.task.attempt, reason=reason, infrastructure=infra)
        except PrivateApiError as exc:
            log.warning("releasing %s failed (the message goes back to the queue): %s", claim.task.uid, exc)
            return "unreachable", Settle.REQUEUE
        return "released", Settle.ACK

    def _clean_up(self, held: _Held) -> None:
        """Remove the attempt's container and folders (any path: success, failure, cancel, release)."""
        if held.container is not None:
            self.engine.remove(held.container.id or "")
        if held.dirs is not None:
            self.workspace.remove_task(held.dirs)
        if held.model_hold is not None:
            held.model_hold.close()
