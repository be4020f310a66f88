"""The Worker: takes one message at a time, runs its task in a thread while the AMQP connection stays alive."""

from __future__ import annotations

import enum
import logging
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from docker.models.containers import Container

from common.messages import decode
from job_consumer.broker import Broker, BrokerError, Delivery
from job_consumer.docker_executor import DockerExecutor, RunResult
from job_consumer.errors import LeaseLost, ModelFailed, PrivateApiError, RetryLater
from job_consumer.private_api import ClaimOutcome, PrivateApiClient
from job_consumer.schemas import Claim, ModelInfo
from job_consumer.timing import StepTimes, current_times, in_task, step, timing_task

__all__ = ["Settle", "Worker", "failure_reason"]

log = logging.getLogger(__name__)

_LOG_TAIL_IN_REASON = 1500


class Settle(enum.Enum):
    """What happens to the message once its task thread is done."""

    ACK = "ack"  # final state stored, or nothing to do
    REQUEUE = "requeue"  # released (or never claimed): give it back


class _ShutdownAbort(Exception):
    """The grace period after SIGTERM ran out while the task ran."""


@dataclass
class _TaskState:
    """Shared between the task thread, its heartbeat thread and the main loop."""

    uid: str
    abort: threading.Event
    lost: threading.Event
    shutdown: threading.Event
    # Set once `settle` is final: the main thread settles the message while the task thread goes on cleaning up.
    settled: threading.Event = field(default_factory=threading.Event)
    settle: Settle = Settle.REQUEUE


def failure_reason(model: ModelInfo, result: RunResult) -> str | None:
    """The user-facing reason a finished run failed, or None when it succeeded."""
    if result.timed_out:
        return f"timed out after {model.timeout:g} s"
    if result.oom_killed or result.exit_code == 137:
        return f"killed: out of memory (limit {model.mem_limit or 'default'})"
    if result.exit_code != 0:
        tail = result.log_tail[-_LOG_TAIL_IN_REASON:].decode("utf-8", "replace").strip()
        return f"exited with code {result.exit_code}" + (f"; log tail:\n{tail}" if tail else "")
    return None


class Worker:
    """Consumes task messages and turns each into a finished, failed or requeued task."""

    def __init__(
        self,
        *,
        broker: Broker,
        api: PrivateApiClient,
        executor: DockerExecutor,
        work_dir: Path,
        heartbeat_seconds: float = 3.0,
        shutdown_grace_seconds: float = 60.0,
        requeue_delay_seconds: float = 2.0,
        reconnect_seconds: float = 5.0,
        cleanup_wait_seconds: float = 120.0,
    ) -> None:
        self.broker = broker
        self.api = api
        self.executor = executor
        self.work_dir = work_dir
        self.heartbeat_seconds = heartbeat_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.requeue_delay_seconds = requeue_delay_seconds
        self.reconnect_seconds = reconnect_seconds
        self.cleanup_wait_seconds = cleanup_wait_seconds
        self.processed = 0
        self._stop_requested_at: float | None = None
        self._current: _TaskState | None = None
        # Task threads still cleaning up after their message was settled, by task uid.
        self._cleaning: dict[str, threading.Thread] = {}

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking work; the running task gets the grace period (safe to call from a signal handler)."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop_requested_at is not None

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a graceful stop."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: finishing the running task, taking no new ones", signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, *, burst: bool = False) -> int:
        """Consume until stopped (or, in burst mode, until the queues are empty); returns the messages handled."""
        removed = self.executor.cleanup_leftovers()
        if removed:
            log.info("removed %d containers and volumes left behind by an earlier run", removed)
        waiting_since: float | None = None
        try:
            while not self.stopping:
                try:
                    if not self.broker.connected:
                        self.broker.connect()
                    if waiting_since is None:
                        waiting_since = time.monotonic()
                    delivery = self.broker.next_delivery(0.5)
                    if delivery is None:
                        if burst and self.broker.queues_empty():
                            break
                        continue
                    waited, waiting_since = time.monotonic() - waiting_since, None
                    self._handle(delivery, waited)
                except BrokerError as exc:
                    if burst and self.processed == 0 and not self.broker.connected:
                        raise
                    log.warning("%s; reconnecting in %.0f s", exc, self.reconnect_seconds)
                    self._sleep(self.reconnect_seconds)
        finally:
            self.broker.stop_consuming()
            self.broker.close()
            self._wait_for_cleanups()
        return self.processed

    def _wait_for_cleanups(self, uid: str | None = None) -> None:
        """Wait for the cleanups that run after a message was settled: all of them, or the one of task uid."""
        for task_uid, thread in list(self._cleaning.items()):
            if uid is not None and task_uid != uid:
                if not thread.is_alive():
                    del self._cleaning[task_uid]
                continue
            thread.join(self.cleanup_wait_seconds)
            if thread.is_alive():
                log.error("cleanup of task %s still runs; the next start removes what it leaves", task_uid)
            del self._cleaning[task_uid]

    def _sleep(self, seconds: float) -> None:
        """Wait without starving the AMQP connection (heartbeats) when there is one."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.broker.connected:
                try:
                    self.broker.pump(min(left, 0.5))
                    continue
                except BrokerError:
                    pass
            time.sleep(min(left, 0.5))

    # ---- one message -------------------------------------------------------------------------------------

    def _handle(self, delivery: Delivery, waited: float = 0.0) -> None:
        """Claim the message's task and run it, then settle the message."""
        self.processed += 1
        try:
            uid = decode(delivery.body)
        except ValueError as exc:
            log.error("dropping a message that is not a task: %s", exc)
            self.broker.ack(delivery)
            return
        times = StepTimes(uid)
        times.add("message wait", waited)
        with timing_task(times):
            self._claim_and_run(delivery, uid, times)
        log.debug("task %s timings: %s", uid, times.summary())

    def _claim_and_run(self, delivery: Delivery, uid: str, times: StepTimes) -> None:
        """Claim the task, run it in a thread and settle the message."""
        try:
            with step("claim"):
                result = self.api.claim(uid)
        except PrivateApiError as exc:
            log.warning("cannot claim %s (%s); requeueing it", uid, exc)
            self._sleep(self.requeue_delay_seconds)
            self.broker.requeue(delivery)
            return
        if result.outcome is ClaimOutcome.SKIP:
            log.info("skipping task %s (%s)", uid, result.status or result.detail)
            self.broker.ack(delivery)
            return
        if result.outcome is ClaimOutcome.LATER:
            log.info("task %s is held by another consumer; requeueing it", uid)
            self._sleep(self.requeue_delay_seconds)
            self.broker.requeue(delivery)
            return
        assert result.claim is not None
        # The same task again (a redelivery after a release): its earlier cleanup must not hit the new run.
        self._wait_for_cleanups(uid)
        settle = self._run_in_thread(result.claim, times)
        if settle is Settle.ACK:
            with step("ack"):
                self.broker.ack(delivery)
        else:
            self._sleep(0 if self.stopping else self.requeue_delay_seconds)
            self.broker.requeue(delivery)

    def _run_in_thread(self, claim: Claim, times: StepTimes) -> Settle:
        """Run the task in a thread while this thread keeps the AMQP connection alive and watches for SIGTERM."""
        state = _TaskState(
            uid=claim.task.uid, abort=threading.Event(), lost=threading.Event(), shutdown=threading.Event()
        )
        self._current = state
        thread = threading.Thread(
            target=self._execute, args=(claim, state, times), name=f"task-{state.uid}", daemon=True
        )
        thread.start()
        try:
            while not state.settled.is_set() and thread.is_alive():
                self._keep_connection_alive(state.settled)
                if self.stopping:
                    if self.broker.consuming:
                        self.broker.stop_consuming()
                    assert self._stop_requested_at is not None
                    if time.monotonic() - self._stop_requested_at > self.shutdown_grace_seconds:
                        if not state.shutdown.is_set():
                            log.warning("grace period over: stopping task %s and requeueing it", state.uid)
                        state.shutdown.set()
                        state.abort.set()
        finally:
            self._current = None
        if thread.is_alive():
            self._cleaning[state.uid] = thread
        return state.settle

    def _keep_connection_alive(self, settled: threading.Event) -> None:
        """Pump pika for a while (the task thread wakes it once settled); a lost connection does not stop the task."""
        if not self.broker.connected:
            settled.wait(0.5)
            return
        try:
            self.broker.pump(0.5)
        except BrokerError as exc:
            log.warning("%s while task runs; its result is still stored, RabbitMQ will redeliver the message", exc)

    # ---- the task thread ---------------------------------------------------------------------------------

    def _heartbeat(self, state: _TaskState, done: threading.Event) -> None:
        """Renew the lease every few seconds; a cancel or a lost lease aborts the task."""
        while not done.wait(self.heartbeat_seconds):
            try:
                self.api.heartbeat(state.uid)
            except LeaseLost as exc:
                log.info("%s: stopping it", exc)
                state.lost.set()
                state.abort.set()
                return
            except PrivateApiError as exc:
                log.warning("heartbeat for %s failed: %s", state.uid, exc)

    def _check(self, state: _TaskState) -> None:
        """Raise when the task must stop between steps."""
        if state.lost.is_set():
            raise LeaseLost(f"task {state.uid} was cancelled or taken over")
        if state.shutdown.is_set():
            raise _ShutdownAbort()

    def _execute(self, claim: Claim, state: _TaskState, times: StepTimes) -> None:
        """Run one claimed task from input to stored final state; sets state.settle."""
        with timing_task(times):
            self._execute_timed(claim, state)

    def _execute_timed(self, claim: Claim, state: _TaskState) -> None:
        """_execute's body, inside the task's timings."""
        uid, model = claim.task.uid, claim.model
        log.info("running task %s (model %s, attempt %d)", uid, model.human_readable_id, claim.task.attempt)
        done = threading.Event()
        beats = threading.Thread(target=self._heartbeat, args=(state, done), name=f"heartbeat-{uid}", daemon=True)
        beats.start()
        scratch = Path(tempfile.mkdtemp(prefix=f"task-{uid}-", dir=self.work_dir))
        try:
            state.settle = self._steps(claim, state, scratch)
        except LeaseLost as exc:
            log.info("task %s: %s; nothing is uploaded", uid, exc)
            state.settle = Settle.ACK
        except ModelFailed as exc:
            state.settle = self._finish(uid, status="failed", reason=exc.reason, exit_code=exc.exit_code)
        except _ShutdownAbort:
            state.settle = self._release(uid, "the consumer shut down before the task finished")
        except RetryLater as exc:
            log.warning("task %s hit an infrastructure problem: %s", uid, exc)
            state.settle = self._release(uid, str(exc))
        except Exception as exc:
            log.exception("task %s failed unexpectedly", uid)
            state.settle = self._release(uid, f"consumer error: {exc!r}")
        finally:
            done.set()
            beats.join(5)
            if state.settle is Settle.ACK:
                # The final state is stored: the message can be acked (and the next one taken) while this cleans up.
                # A requeued task is cleaned up first, so that a rerun never meets this run's containers.
                self._settled(state)
            try:
                with step("cleanup"):
                    self.executor.cleanup_task(uid)
            except RetryLater as exc:
                log.error("cleanup of task %s failed: %s (it is retried at the next start)", uid, exc)
            shutil.rmtree(scratch, ignore_errors=True)
            self._settled(state)

    def _settled(self, state: _TaskState) -> None:
        """Tell the main thread that state.settle is final (waking it from pika's I/O wait)."""
        if not state.settled.is_set():
            state.settled.set()
            self.broker.wake()

    def _steps(self, claim: Claim, state: _TaskState, scratch: Path) -> Settle:
        """The steps of a task; raises the deliberate exceptions for the other outcomes."""
        uid, model = claim.task.uid, claim.model
        with step("image check"):
            self.executor.ensure_image(model.container_tag)
        sha = model.zip_sha256 or ""
        with step("model volume"):
            model_volume = self.executor.ensure_model_volume(
                model,
                lambda dest: self.api.download_model_zip(model.human_readable_id, dest, expected_sha256=sha),
            )
        self._check(state)
        input_zip = scratch / "input.zip"
        container: Container | None = None
        if self.executor.uses_bind_mounts(model.container_tag):
            volumes = self.executor.task_folders(uid)
            # The container does not need the input to be created: the engine creates it while the input comes in.
            # Leaving the block waits for the creation, so the task's cleanup always finds the container.
            with ThreadPoolExecutor(1, thread_name_prefix=f"create-{uid}") as pool:
                creating = pool.submit(
                    in_task(current_times(), self.executor.create_container),
                    task_uid=uid,
                    model=model,
                    volumes=volumes,
                    model_volume=model_volume,
                )
                self._download_input(uid, input_zip, state)
                self.executor.fill_folders(volumes, input_zip)
                container = creating.result()
        else:
            self._download_input(uid, input_zip, state)
            volumes = self.executor.prepare_task(task_uid=uid, model=model, input_zip=input_zip)
        input_zip.unlink()
        self._check(state)
        result = self.executor.run(
            task_uid=uid,
            model=model,
            volumes=volumes,
            model_volume=model_volume,
            abort=state.abort,
            container=container,
        )
        self._check(state)
        if result.aborted:
            raise LeaseLost(f"task {uid} was stopped")
        log_text = result.log_tail
        if result.log_truncated:
            log_text = b"[... earlier output cut ...]\n" + log_text
        with step("upload logs"):
            self.api.upload_logs(uid, log_text)
        reason = failure_reason(model, result)
        if reason is not None:
            log.info("task %s failed: %s", uid, reason.splitlines()[0])
            return self._finish(uid, status="failed", reason=reason, exit_code=result.exit_code)
        output = scratch / "output.zip"
        with step("output zip"):
            summary = self.executor.write_output_zip(result.container_id, output, volumes)
        self._check(state)
        with step("upload output"):
            self.api.upload_output(uid, output)
        log.info("task %s finished: %d files, %d bytes in %.1f s", uid, summary.files, summary.bytes, result.duration)
        return self._finish(uid, status="finished", reason=None, exit_code=0)

    def _download_input(self, uid: str, dest: Path, state: _TaskState) -> None:
        """Fetch the task's input zip; raise when the task must stop meanwhile."""
        with step("input download"):
            self.api.download_input(uid, dest)
        self._check(state)

    def _finish(self, uid: str, *, status: str, reason: str | None, exit_code: int | None) -> Settle:
        """Store the final state (retrying a while); ACK once stored or once the task is no longer ours."""
        for delay in (0.0, 1.0, 2.0, 4.0, 8.0):
            time.sleep(delay)
            try:
                with step("finish"):
                    self.api.finish(uid, status=status, reason=reason, exit_code=exit_code)
                return Settle.ACK
            except PrivateApiError as exc:
                log.warning("storing the final state of %s failed: %s", uid, exc)
        return Settle.REQUEUE

    def _release(self, uid: str, reason: str) -> Settle:
        """Put the task back to pending; the message is requeued either way."""
        try:
            self.api.release(uid, reason=reason)
        except PrivateApiError as exc:
            log.warning("releasing %s failed (its lease runs out instead): %s", uid, exc)
        return Settle.REQUEUE
