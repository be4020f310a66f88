"""Publishes stored tasks to RabbitMQ from the outbox (`tasks.published_at IS NULL`), with publisher confirms.

One background thread owns the AMQP connection (pika is not thread-safe). Requests only wake it. When the broker
is down, tasks stay in the outbox and are published once it is back: nothing accepted is lost.
"""

from __future__ import annotations

import logging
import threading

import pika
from pika.adapters.blocking_connection import BlockingChannel
from sqlalchemy.orm import Session, sessionmaker

from common.messages import declare_queues, encode, queue_for
from private_api import crud

log = logging.getLogger(__name__)

_BATCH = 500
_PROPERTIES = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")


class Publisher:
    """The outbox loop: wakes on new tasks or every `interval` seconds and publishes what is unpublished."""

    def __init__(self, *, url: str, sessions: sessionmaker[Session], interval: float) -> None:
        self.url = url
        self.sessions = sessions
        self.interval = interval
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

    def publish_pending(self) -> int:
        """Publish every unpublished task, each confirmed by the broker before it is marked; returns the count."""
        assert self._channel is not None
        published = 0
        while True:
            with self.sessions() as session:
                tasks = crud.unpublished_tasks(session, limit=_BATCH)
                for task in tasks:
                    self._channel.basic_publish(
                        exchange="",
                        routing_key=queue_for(use_gpu=task.use_gpu),
                        body=encode(task.uid),
                        properties=_PROPERTIES,
                        mandatory=True,
                    )
                    crud.mark_published(session, task_id=task.id)
                    session.commit()
                    published += 1
            if len(tasks) < _BATCH:
                if published:
                    log.info("published %d task(s)", published)
                return published
