"""Publishes stored tasks to RabbitMQ from the outbox in the tasks table, with publisher confirms.

One background thread owns the AMQP connection (pika is not thread-safe). Requests only wake it. When the broker
is down, tasks stay in the outbox and are published once it is back: nothing accepted is lost.

Each round the thread also
- returns running tasks whose lease expired to pending (the reaper), which marks them for publish;
- declares the queues (a deleted queue is made again) and, when a queue holds fewer messages than pending tasks
  were published to it (purged, or the broker lost its data), publishes again the tasks published more than
  REPUBLISH_AFTER_SECONDS ago: the queue is rebuilt from the database. Duplicates are harmless (claims are
  compare-and-set; a consumer acknowledges and drops a message for a task that is not claimable).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pika
from pika.adapters.blocking_connection import BlockingChannel
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.messages import CPU_QUEUE, GPU_QUEUE, declare_queues, encode, queue_for
from private_api import crud_consumers, leases, outbox
from private_api.orm import utcnow

log = logging.getLogger(__name__)

_BATCH = 200
# Consumer instances not seen for this long are dropped from /healthz.
_FORGET_CONSUMERS_AFTER = timedelta(days=1)
_SHORT_CONFIRM_SECONDS = 1.0
_PROPERTIES = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")


class Publisher:
    """The outbox loop: wakes on new tasks or every `interval` seconds, reaps expired leases, publishes what is due."""

    def __init__(
        self,
        *,
        url: str,
        sessions: sessionmaker[Session],
        interval: float,
        republish_after: float = 60.0,
        lease_rule: leases.LeaseRule | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.url = url
        self.sessions = sessions
        self.interval = interval
        self.republish_after = republish_after
        self.lease_rule = lease_rule
        self.max_attempts = max_attempts
        self._short_since: dict[str, float] = {}
        self._pruned_at = float("-inf")
        self._database_failed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self.last_error: str | None = "not connected yet"

    @property
    def connected(self) -> bool:
        """True while the broker connection is open."""
        return self._connection is not None and self._connection.is_open

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._run, name="outbox-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the connection."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Publish soon: a task was stored."""
        self._wake.set()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait(timeout=self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.reap()
            try:
                self._ensure_connected()
                self.publish_pending()
                backoff = 0.5
            except Exception as exc:  # the broker or the database is away: keep the outbox, retry later
                self.last_error = f"{type(exc).__name__}: {exc or repr(exc)}"
                log.warning("publishing paused: %s; retrying in %.1fs", self.last_error, backoff)
                self._disconnect()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self._disconnect()

    def _ensure_connected(self) -> None:
        if self.connected and self._channel is not None and self._channel.is_open:
            assert self._connection is not None
            self._connection.process_data_events(time_limit=0)  # heartbeats while idle
            return
        self._disconnect()
        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 30
        self._connection = pika.BlockingConnection(params)
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        declare_queues(self._channel)
        self.last_error = None
        log.info("connected to the broker")

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:
                log.debug("closing a broken connection failed", exc_info=True)

    def reap(self) -> int:
        """Return running tasks with an expired lease to pending; forget long-gone consumers. Errors are logged."""
        if self.lease_rule is None:
            return 0
        try:
            with self.sessions() as session:
                if self._database_failed:  # holders could not renew during the outage: a full lease from now
                    session.execute(select(1))
                    self.lease_rule.restart(utcnow())
                    self._database_failed = False
                reaped = leases.reap_expired(session, rule=self.lease_rule, max_attempts=self.max_attempts)
                if time.monotonic() - self._pruned_at > 600:
                    crud_consumers.prune(session, seen_before=utcnow() - _FORGET_CONSUMERS_AFTER)
                    self._pruned_at = time.monotonic()
        except Exception as exc:  # the database is away: the next round tries again
            self._database_failed = True
            log.warning("reaping expired leases failed: %s: %s", type(exc).__name__, exc)
            return 0
        if reaped:
            log.warning("%d task(s) lost their consumer (no heartbeat for %gs)", reaped, self.lease_rule.seconds)
        return reaped

    def _short_queues(self, channel: BlockingChannel) -> list[bool]:
        """Declare the queues; the resource classes (use_gpu) whose queue holds fewer messages than it should.

        A published pending task has a message in its queue, or one just delivered to a consumer that is about to
        claim it; a queue counts as short only when it is short in two looks at least _SHORT_CONFIRM_SECONDS apart.
        """
        ready = {}
        for name in (GPU_QUEUE, CPU_QUEUE):
            ready[name] = channel.queue_declare(queue=name, durable=True).method.message_count
        with self.sessions() as session:
            expected = outbox.waiting_published(session)
        now = time.monotonic()
        short = []
        for name, use_gpu in ((GPU_QUEUE, True), (CPU_QUEUE, False)):
            if ready[name] >= expected.get(name, 0):
                self._short_since.pop(name, None)
                continue
            since = self._short_since.setdefault(name, now)
            if now - since >= _SHORT_CONFIRM_SECONDS:
                log.info("queue %s holds %d message(s) for %d pending task(s)", name, ready[name], expected[name])
                short.append(use_gpu)
        return short

    def publish_pending(self) -> int:
        """Publish every due task, each confirmed by the broker before it is marked; returns the count."""
        channel = self._channel
        assert channel is not None
        short = self._short_queues(channel)
        published = 0
        while True:
            now = utcnow()
            with self.sessions() as session:
                tasks = outbox.due_tasks(
                    session,
                    now=now,
                    republish_before=now - timedelta(seconds=self.republish_after),
                    republish_gpu=short,
                    limit=_BATCH,
                )
                done: list[int] = []
                try:
                    for task in tasks:
                        channel.basic_publish(
                            exchange="",
                            routing_key=queue_for(use_gpu=task.use_gpu),
                            body=encode(task.uid),
                            properties=_PROPERTIES,
                            mandatory=True,
                        )
                        done.append(task.id)
                finally:
                    outbox.mark_published(session, task_ids=done, at=utcnow())
                    session.commit()
                    published += len(done)
            if len(tasks) < _BATCH:
                if published:
                    log.info("published %d task(s)", published)
                return published
