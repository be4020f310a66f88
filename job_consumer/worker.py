"""The Worker: takes one message at a time; its task runs in a thread while the AMQP connection stays alive."""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from types import FrameType

from common.messages import decode
from job_consumer.broker import Broker, BrokerError, Delivery
from job_consumer.errors import PrivateApiError
from job_consumer.housekeeping import Housekeeping
from job_consumer.metrics import ConsumerMetrics
from job_consumer.private_api import ClaimOutcome
from job_consumer.task_runner import Settle, TaskControl, TaskResult, TaskRunner

__all__ = ["Worker"]

log = logging.getLogger(__name__)


class Worker:
    """Consumes task messages and turns each into a finished, failed or released task."""

    def __init__(
        self,
        *,
        broker: Broker,
        runner: TaskRunner,
        housekeeping: Housekeeping,
        shutdown_grace_seconds: float = 60.0,
        requeue_delay_seconds: float = 2.0,
        reconnect_seconds: float = 5.0,
        cleanup_wait_seconds: float = 120.0,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.broker = broker
        self.runner = runner
        self.api = runner.api
        self.housekeeping = housekeeping
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.requeue_delay_seconds = requeue_delay_seconds
        self.reconnect_seconds = reconnect_seconds
        self.cleanup_wait_seconds = cleanup_wait_seconds
        self.metrics = metrics or ConsumerMetrics()
        self.processed = 0
        # The latest tasks' results (outcome and phase timings), newest last.
        self.results: collections.deque[TaskResult] = collections.deque(maxlen=100)
        self._stop_requested_at: float | None = None
        # Task threads still cleaning up after their message was settled.
        self._cleaning: list[threading.Thread] = []
        # The uid of the task the current message's claim handed out (fair order may hand out another one).
        self._running_uid: str | None = None

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
        self.housekeeping.tick()
        try:
            while not self.stopping:
                try:
                    self.broker.set_queues(self.housekeeping.active_queues())
                    if not self.broker.connected:
                        self.broker.connect()
                    delivery = self.broker.next_delivery(0.5)
                    self.housekeeping.tick()
                    if delivery is None:
                        if burst and self.broker.queues_empty():
                            break
                        continue
                    self._handle(delivery)
                except BrokerError as exc:
                    if burst and self.processed == 0 and not self.broker.connected:
                        raise
                    log.warning("%s; reconnecting in %.0f s", exc, self.reconnect_seconds)
                    self._sleep(self.reconnect_seconds)
        finally:
            self.broker.stop_consuming()
            self.broker.close()
            for thread in self._cleaning:
                thread.join(self.cleanup_wait_seconds)
            self.runner.workspace.close()
            self.housekeeping.goodbye()
        return self.processed

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

    def _handle(self, delivery: Delivery) -> None:
        """Claim and run the message's task in the task thread, keep the connection alive, settle the message."""
        self.processed += 1
        try:
            uid = decode(delivery.body)
        except ValueError as exc:
            log.error("dropping a message that is not a task: %s", exc)
            self.broker.ack(delivery)
            return
        control = TaskControl()
        settled = threading.Event()
        outcome: list[Settle] = []

        def on_settled(settle: Settle) -> None:
            outcome.append(settle)
            settled.set()
            self.broker.wake()

        control.on_settled = on_settled
        thread = threading.Thread(target=self._task, args=(uid, control), name=f"task-{uid}", daemon=True)
        thread.start()
        while not settled.is_set() and thread.is_alive():
            self._keep_connection_alive(settled)
            self.housekeeping.tick()
            if self.stopping:
                if self.broker.consuming:
                    self.broker.stop_consuming()
                assert self._stop_requested_at is not None
                if time.monotonic() - self._stop_requested_at > self.shutdown_grace_seconds:
                    if not control.shutdown.is_set():
                        log.warning("grace period over: stopping task %s and releasing it", self._running_uid or uid)
                    control.shutdown.set()
                    control.abort.set()
                    self.api.abandon.set()
        self._cleaning = [t for t in self._cleaning if t.is_alive()]
        if thread.is_alive():
            self._cleaning.append(thread)
        if outcome and outcome[0] is Settle.ACK:
            self.broker.ack(delivery)
        else:
            self._sleep(0 if self.stopping else self.requeue_delay_seconds)
            self.broker.requeue(delivery)

    def _task(self, uid: str, control: TaskControl) -> None:
        """The task thread: claim with the message's uid, then run the task the claim handed out (its own uid)."""
        self._running_uid = None
        try:
            claimed = self.api.claim(uid)
        except PrivateApiError as exc:
            log.warning("cannot claim %s (%s); the message goes back to the queue", uid, exc)
            control.on_settled(Settle.REQUEUE)
            return
        if claimed.outcome is ClaimOutcome.SKIP or claimed.claim is None:
            log.info("dropping the message of task %s (%s)", uid, claimed.status or claimed.detail)
            control.on_settled(Settle.ACK)
            return
        handed = claimed.claim.task.uid
        if handed != uid:
            log.info("the message of task %s was handed task %s (fair order across keys)", uid, handed)
        self._running_uid = handed
        result = self.runner.run(claimed.claim, control)
        self.results.append(result)
        self.metrics.task_done(claimed.claim, result)

    def _keep_connection_alive(self, settled: threading.Event) -> None:
        """Pump pika for a while (the task thread wakes it once settled); a lost connection does not stop the task."""
        if not self.broker.connected:
            settled.wait(0.5)
            return
        try:
            self.broker.pump(0.5)
        except BrokerError as exc:
            log.warning("%s while task runs; its result is still stored, RabbitMQ will redeliver the message", exc)
