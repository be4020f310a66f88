"""One claimed task, start to end: provision, run, collect, clean up; phase timings come back on the result.

The heartbeat (progress.py) says the phase as it changes: preparing from the claim, running once the container
started, uploading once it ended; the final state carries the attempt's provenance (provenance.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from job_consumer.containers import Engine, RunResult
from job_consumer.errors import GpuUnusable, LeaseLost, ModelFailed, PrivateApiError, RetryLater
from job_consumer.outputs import OutputTooLarge, folder_to_zip
from job_consumer.private_api import PrivateApiClient
from job_consumer.progress import Reporter
from job_consumer.provenance import GpuInfo, Record
from job_consumer.provisioning import Held, Provisioning, Settle, Shutdown, TaskControl, disk
from job_consumer.sandbox import Sandbox, output_relative
from job_consumer.schemas import Claim, ModelInfo
from job_consumer.workspace import TaskDirs, Workspace

__all__ = ["Settle", "TaskControl", "TaskResult", "TaskRunner", "failure_reason"]

log = logging.getLogger(__name__)

_LOG_TAIL_IN_REASON = 1500


@dataclass
class TaskResult:
    """How a task ended for this consumer, and where its time went (seconds per phase)."""

    uid: str
    outcome: str
    settle: Settle
    phases: dict[str, float] = field(default_factory=dict)
    # Seconds per phase as the status names them (queued, preparing, running, uploading), as in the provenance.
    timings: dict[str, float] = field(default_factory=dict)
    # Why it failed or was released (for the metrics' reason classes), and whether the host was to blame.
    reason: str | None = None
    infrastructure: bool = False


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


class TaskRunner(Provisioning):
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
        gpu_info: Callable[[], GpuInfo | None] = lambda: None,
    ) -> None:
        self.api = api
        self.engine = engine
        self.workspace = workspace
        self.sandbox = sandbox
        self.scope = scope
        self.heartbeat_seconds = heartbeat_seconds
        self.on_gpu_error = on_gpu_error
        self.gpu_info = gpu_info
        self.progress_file = output_relative(sandbox.progress_file)

    def _record(self, claim: Claim) -> Record:
        """The attempt's provenance, as far as it is known at the claim."""
        gpu: dict[str, str] | None = None
        if claim.model.use_gpu and self.sandbox.gpu_device:
            info = self.gpu_info()
            gpu = info.as_dict(self.sandbox.gpu_device) if info else {"device": self.sandbox.gpu_device}
        record = Record(
            claim=claim,
            consumer_name=self.api.consumer_name,
            instance_id=self.api.instance_id,
            host=self.engine.host_name(),
            gpu=gpu,
        )
        record.enter("preparing")
        return record

    def run(self, claim: Claim, control: TaskControl) -> TaskResult:
        """Run one claimed task to a stored final state (or a release); never raises."""
        uid, attempt = claim.task.uid, claim.task.attempt
        result = TaskResult(uid=uid, outcome="", settle=Settle.ACK)
        log.info("running task %s (model %s, attempt %d)", uid, claim.model.human_readable_id, attempt)

        def lost() -> None:
            control.lost.set()
            control.abort.set()

        reporter = Reporter(self.api, uid, attempt, interval=self.heartbeat_seconds, on_lost=lost)
        reporter.start()  # says `preparing` at once
        held = Held()
        record = self._record(claim)
        try:
            result.outcome, result.settle = self._steps(claim, control, result, held, record, reporter)
        except LeaseLost as exc:
            log.info("task %s: %s; nothing is stored", uid, exc)
            result.outcome = "lost"
        except ModelFailed as exc:
            record.exit_code = exc.exit_code if exc.exit_code is not None else record.exit_code
            result.reason = exc.reason
            result.outcome, result.settle = self._finish(claim, "failed", exc.reason, exc.exit_code, record)
        except Shutdown:
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
            reporter.stop()
            result.timings = {name: timing["seconds"] for name, timing in record.timings().items()}
            # The message is settled now; the cleanup below runs meanwhile (nothing of it is needed any more).
            control.on_settled(result.settle)
            started = time.monotonic()
            self._clean_up(held)
            result.phases["cleanup"] = time.monotonic() - started
        phases = ", ".join(f"{name} {seconds:.3f}" for name, seconds in result.phases.items())
        log.info("task %s %s", uid, result.outcome)
        log.debug("task %s timings: %s; total %.3f s", uid, phases, sum(result.phases.values()))
        return result

    def _steps(
        self,
        claim: Claim,
        control: TaskControl,
        result: TaskResult,
        held: Held,
        record: Record,
        reporter: Reporter,
    ) -> tuple[str, Settle]:
        """Provision, run, collect; raises the deliberate exceptions for the other outcomes."""
        model, phases = claim.model, result.phases
        started = time.monotonic()
        dirs, container = self._provision(claim, control, held, record)
        phases["provision"] = time.monotonic() - started
        started = self.engine.start(container)
        record.enter("running")
        reporter.set_phase("running", progress_path=dirs.output / self.progress_file)
        run = self.engine.wait(container, timeout=model.timeout, abort=control.abort, started=started)
        record.enter("uploading")
        reporter.set_phase("uploading")
        record.exit_code = run.exit_code
        phases["run"] = run.duration
        self._check(control)
        if run.aborted:
            raise LeaseLost("its container was stopped")
        started = time.monotonic()
        reason = result.reason = self._collect(claim, control, dirs, run, record)
        outcome = self._finish(claim, "failed" if reason else "finished", reason, run.exit_code, record)
        phases["collect"] = time.monotonic() - started
        return outcome

    def _collect(
        self, claim: Claim, control: TaskControl, dirs: TaskDirs, run: RunResult, record: Record
    ) -> str | None:
        """Store the log and, for a run that succeeded, the output zip; the reason a run failed, else None."""
        uid, attempt, model = claim.task.uid, claim.task.attempt, claim.model
        log_text = (b"[... earlier output cut ...]\n" if run.log_truncated else b"") + run.log_tail
        try:
            self.api.upload_logs(uid, attempt, log_text)
        except PrivateApiError as exc:  # the log is worth less than the result: go on to the output and finish
            log.warning("the log of task %s was not stored: %s", uid, exc)
        reason = failure_reason(model, run)
        if reason is not None:
            return reason
        try:
            with disk("write the output zip"):
                summary = folder_to_zip(
                    dirs.output,
                    dirs.output_zip,
                    max_bytes=model.max_output_bytes,
                    exclude=frozenset({self.progress_file.as_posix()}),
                )
        except OutputTooLarge as exc:
            raise ModelFailed(f"{exc}; nothing was stored", exit_code=run.exit_code) from exc
        self._check(control)
        record.output_sha256 = self.api.upload_output(uid, attempt, dirs.output_zip)
        log.info("task %s: %d files, %d bytes of output", uid, summary.files, summary.bytes)
        return None

    def _finish(
        self, claim: Claim, status: str, reason: str | None, exit_code: int | None, record: Record
    ) -> tuple[str, Settle]:
        """Store the final state with its provenance; ACK once stored or once the task is no longer ours."""
        if reason:
            log.info("task %s failed: %s", claim.task.uid, reason.splitlines()[0])
        try:
            self.api.finish(
                claim.task.uid,
                claim.task.attempt,
                status=status,
                reason=reason,
                exit_code=exit_code,
                provenance=record.as_dict(),
            )
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

    def _clean_up(self, held: Held) -> None:
        """Remove the attempt's container and folders (any path: success, failure, cancel, release)."""
        if held.container is not None:
            self.engine.remove(held.container.id or "")
        if held.dirs is not None:
            self.workspace.remove_task(held.dirs)
        if held.model_hold is not None:
            held.model_hold.close()
            self.workspace.remove_deferred_versions()
