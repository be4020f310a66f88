"""The consumer's side of RabbitMQ (the only module here that speaks AMQP)."""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from common.messages import CPU_QUEUE, GPU_QUEUE, declare_queues
from job_consumer.errors import RetryLater

__all__ = ["Broker", "BrokerError", "Delivery", "queues_for"]

log = logging.getLogger(__name__)


class BrokerError(RetryLater):
    """RabbitMQ could not be reached or closed the channel."""


@dataclass(frozen=True)
class Delivery:
    """One message handed to this consumer."""

    queue: str
    delivery_tag: int
    body: bytes
    redelivered: bool
    generation: int


def queues_for(*, has_gpu: bool) -> list[str]:
    """The queues a consumer takes work from: a GPU consumer both, a CPU-only consumer only the CPU queue."""
    return [GPU_QUEUE, CPU_QUEUE] if has_gpu else [CPU_QUEUE]


class Broker:
    """A blocking pika connection with prefetch 1 over the consumer's queues; the owner pumps it regularly."""

    def __init__(self, url: str, queues: list[str]) -> None:
        self.url = url
        self.queues = list(queues)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pending: collections.deque[Delivery] = collections.deque()
        # The queues consumed now, with their consumer tags (a GPU consumer drops its GPU queue while the GPU fails).
        self._consumer_tags: dict[str, str] = {}
        # Bumped on every (re)connect: a delivery tag from an older channel cannot be acknowledged.
        self._generation = 0

    @property
    def connected(self) -> bool:
        """True while the connection and channel are open."""
        return bool(self._connection and self._connection.is_open and self._channel and self._channel.is_open)

    @property
    def consuming(self) -> bool:
        """True while this consumer takes new messages."""
        return bool(self._consumer_tags)

    def connect(self) -> None:
        """Open the connection, declare the queues, set prefetch 1 for the whole channel and start consuming."""
        self.close()
        try:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = self._connection.channel()
            declare_queues(channel)
            # global_qos: one unacknowledged message per channel, not per queue (it consumes two queues).
            channel.basic_qos(prefetch_count=1, global_qos=True)
            self._channel = channel
            self._generation += 1
            self._consumer_tags = {}
            self.set_queues(self.queues)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise BrokerError(f"cannot consume from RabbitMQ: {exc!r}") from exc

    def set_queues(self, queues: list[str]) -> None:
        """Consume exactly these queues from now on (at once when connected, else from the next connect)."""
        self.queues = list(queues)
        if not self.connected or self._channel is None:
            return
        changed = False
        try:
            for name in [q for q in self._consumer_tags if q not in self.queues]:
                self._channel.basic_cancel(self._consumer_tags.pop(name))
                changed = True
            for name in [q for q in self.queues if q not in self._consumer_tags]:
                self._consumer_tags[name] = self._channel.basic_consume(
                    queue=name, on_message_callback=self._on_message
                )
                changed = True
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise BrokerError(f"cannot change the consumed queues: {exc!r}") from exc
        for delivery in [d for d in self._pending if d.queue not in self.queues]:
            self._pending.remove(delivery)
            self.requeue(delivery)
        if changed:
            log.info("consuming %s", ", ".join(self.queues) or "nothing")

    def _on_message(
        self, channel: BlockingChannel, method: Basic.Deliver, _props: BasicProperties, body: bytes
    ) -> None:
        """Keep a delivery for the owner's loop (handled outside pika's callback)."""
        self._pending.append(
            Delivery(
                queue=method.routing_key or "",
                delivery_tag=method.delivery_tag,
                body=body,
                redelivered=bool(method.redelivered),
                generation=self._generation,
            )
        )

    def pump(self, seconds: float) -> None:
        """Let pika do its I/O (heartbeats, deliveries) for up to `seconds`."""
        if not self._connection:
            raise BrokerError("not connected to RabbitMQ")
        try:
            self._connection.process_data_events(time_limit=seconds)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise BrokerError(f"lost the RabbitMQ connection: {exc!r}") from exc

    def wake(self) -> None:
        """From any thread: make a running `pump` return now (a no-op without a connection)."""
        connection = self._connection
        if connection is None:
            return
        try:
            connection.add_callback_threadsafe(lambda: None)
        except (pika.exceptions.AMQPError, OSError, RuntimeError) as exc:
            log.debug("cannot wake the consumer's AMQP loop: %r", exc)

    def next_delivery(self, seconds: float) -> Delivery | None:
        """The next delivery, waiting up to `seconds` for one."""
        if not self._pending:
            self.pump(seconds)
        return self._pending.popleft() if self._pending else None

    def _settle(self, delivery: Delivery, *, ack: bool, requeue: bool = True) -> bool:
        """Ack or nack; False (logged) when the channel it came on is gone (RabbitMQ redelivers it anyway)."""
        if delivery.generation != self._generation or not self.connected or self._channel is None:
            log.warning(
                "cannot settle message %s: its channel is gone; RabbitMQ will redeliver it", delivery.delivery_tag
            )
            return False
        try:
            if ack:
                self._channel.basic_ack(delivery.delivery_tag)
            else:
                self._channel.basic_nack(delivery.delivery_tag, requeue=requeue)
            return True
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.warning("cannot settle message %s: %r", delivery.delivery_tag, exc)
            self.close()
            return False

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge: the task's final state is stored (or there is nothing to do)."""
        return self._settle(delivery, ack=True)

    def requeue(self, delivery: Delivery) -> bool:
        """Give the message back to the queue for this or another consumer."""
        return self._settle(delivery, ack=False, requeue=True)

    def stop_consuming(self) -> None:
        """Take no new messages; deliveries not yet handled are requeued."""
        if self._channel is not None and self.connected:
            try:
                for tag in self._consumer_tags.values():
                    self._channel.basic_cancel(tag)
            except (pika.exceptions.AMQPError, OSError) as exc:
                log.warning("cancelling the consumers failed: %r", exc)
        self._consumer_tags = {}
        while self._pending:
            self.requeue(self._pending.popleft())

    def queues_empty(self) -> bool:
        """True when no message waits in any of the consumer's queues (unacknowledged ones are not counted)."""
        if self._channel is None or not self.connected:
            raise BrokerError("not connected to RabbitMQ")
        if self._pending:
            return False
        try:
            return all(
                self._channel.queue_declare(queue=name, durable=True, passive=True).method.message_count == 0
                for name in self.queues
            )
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise BrokerError(f"cannot read the queue lengths: {exc!r}") from exc

    def close(self) -> None:
        """Close the connection (unacknowledged messages go back to the queue)."""
        connection, self._connection, self._channel = self._connection, None, None
        self._consumer_tags = {}
        self._pending.clear()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError) as exc:
                log.debug("closing the RabbitMQ connection: %r", exc)
