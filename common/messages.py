"""The queue contract between the private API (publisher) and the job consumers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

__all__ = ["CPU_QUEUE", "GPU_QUEUE", "declare_queues", "decode", "encode", "queue_for"]

GPU_QUEUE = "inference.tasks.gpu"
CPU_QUEUE = "inference.tasks.cpu"


def queue_for(*, use_gpu: bool) -> str:
    """The queue a task of a model with this resource class goes to."""
    return GPU_QUEUE if use_gpu else CPU_QUEUE


def declare_queues(channel: BlockingChannel) -> None:
    """Declare both durable task queues (idempotent; publisher and consumers declare them alike)."""
    for name in (GPU_QUEUE, CPU_QUEUE):
        channel.queue_declare(queue=name, durable=True)


def encode(uid: str) -> bytes:
    """The message body for a task uid."""
    return json.dumps({"uid": uid}).encode()


def decode(body: bytes) -> str:
    """The task uid in a message body; ValueError when the body is not one of ours."""
    try:
        uid = json.loads(body)["uid"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a task message: {body[:100]!r}") from exc
    if not isinstance(uid, str):
        raise ValueError(f"not a task message: {body[:100]!r}")
    return uid
