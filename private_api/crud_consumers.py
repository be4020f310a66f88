"""The consumer instances, as their heartbeats report them, and what users see of them (healthz, models, tasks)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.messages import CPU_QUEUE, GPU_QUEUE, queue_for
from common.schemas import ModelOut, TaskOut
from private_api import crud
from private_api.orm import Consumer, Model, Task, utcnow
from private_api.retention import Retention
from private_api.schemas import ConsumerHeartbeatIn, ConsumerOut

QUEUES = (GPU_QUEUE, CPU_QUEUE)
_KIND = {GPU_QUEUE: "GPU", CPU_QUEUE: "CPU"}


def record_heartbeat(session: Session, *, instance_id: str, beat: ConsumerHeartbeatIn) -> None:
    """Insert or refresh a consumer instance; last_seen is now."""
    fields = beat.model_dump()
    fields["queues"] = json.dumps(beat.queues)
    for _ in range(2):  # a concurrent first heartbeat of the same instance loses the insert and updates instead
        consumer = session.get(Consumer, instance_id)
        if consumer is None:
            consumer = Consumer(instance_id=instance_id, started_at=utcnow())
            session.add(consumer)
        for name, value in fields.items():
            setattr(consumer, name, value)
        consumer.last_seen = utcnow()
        try:
            session.commit()
            return
        except IntegrityError:
            session.rollback()
    raise RuntimeError(f"could not record the heartbeat of {instance_id!r}")


def forget(session: Session, *, instance_id: str) -> bool:
    """Remove a consumer instance (it shut down cleanly); False when unknown."""
    removed = session.execute(delete(Consumer).where(Consumer.instance_id == instance_id))
    session.commit()
    return int(removed.rowcount) > 0  # type: ignore[attr-defined]


def prune(session: Session, *, seen_before: datetime) -> int:
    """Forget instances not seen since seen_before (they died without saying goodbye, long ago)."""
    removed = session.execute(delete(Consumer).where(Consumer.last_seen < seen_before))
    session.commit()
    return int(removed.rowcount)  # type: ignore[attr-defined]


def _queues(consumer: Consumer) -> list[str]:
    try:
        queues = json.loads(consumer.queues or "[]")
    except ValueError:
        return []
    return [str(q) for q in queues] if isinstance(queues, list) else []


def consumers(session: Session, *, stale_seconds: float) -> list[ConsumerOut]:
    """Every known instance, newest first, with whether it is live (seen within stale_seconds)."""
    since = utcnow() - timedelta(seconds=stale_seconds)
    rows = session.scalars(select(Consumer).order_by(Consumer.last_seen.desc()))
    return [
        ConsumerOut(
            instance_id=c.instance_id,
            name=c.name,
            host=c.host,
            queues=_queues(c),
            gpu_device=c.gpu_device,
            gpu_usable=c.gpu_usable,
            gpu_reason=c.gpu_reason,
            free_disk_bytes=c.free_disk_bytes,
            started_at=c.started_at,
            last_seen=c.last_seen,
            live=c.last_seen >= since,
        )
        for c in rows
    ]


def live_per_queue(session: Session, *, stale_seconds: float) -> dict[str, int]:
    """Per task queue: how many live consumer instances read it."""
    since = utcnow() - timedelta(seconds=stale_seconds)
    counts = dict.fromkeys(QUEUES, 0)
    for consumer in session.scalars(select(Consumer).where(Consumer.last_seen >= since)):
        for queue in _queues(consumer):
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def _pending_per_queue(session: Session) -> dict[str, int]:
    query = (
        select(Task.use_gpu, func.count())
        .where(Task.status == "pending", Task.deleted.is_(False))
        .group_by(Task.use_gpu)
    )
    return {queue_for(use_gpu=bool(gpu)): int(n) for gpu, n in session.execute(query)}


def health(session: Session, *, stale_seconds: float) -> tuple[list[ConsumerOut], dict[str, int], list[str]]:
    """The consumers, live consumers per queue, and warnings an operator should act on."""
    instances = consumers(session, stale_seconds=stale_seconds)
    live = live_per_queue(session, stale_seconds=stale_seconds)
    warnings = []
    for queue, waiting in sorted(_pending_per_queue(session).items()):
        if waiting and not live.get(queue):
            warnings.append(f"queue {queue} has no live consumer; {waiting} task(s) wait")
    for c in instances:
        if c.live and c.gpu_usable is False:
            warnings.append(f"consumer {c.name} ({c.instance_id}): GPU unusable: {c.gpu_reason or 'no reason given'}")
    return instances, live, warnings


def _no_consumer_warning(queue: str) -> str:
    kind = _KIND.get(queue, queue)
    return f"no live consumer reads queue {queue}: tasks for this model wait until a {kind} consumer starts"


def model_out(model: Model, live: dict[str, int]) -> ModelOut:
    """The model JSON with how many live consumers read its queue (and a warning when none does)."""
    queue = queue_for(use_gpu=model.use_gpu)
    count = live.get(queue, 0)
    out = ModelOut.model_validate(model)
    return out.model_copy(update={"consumers": count, "warning": None if count else _no_consumer_warning(queue)})


def models_out(session: Session, models: list[Model], *, stale_seconds: float) -> list[ModelOut]:
    """model_out for each model, with one look at the consumers."""
    live = live_per_queue(session, stale_seconds=stale_seconds)
    return [model_out(model, live) for model in models]


def waiting_for(task: Task, live: dict[str, int]) -> str | None:
    """For a pending task whose queue no live consumer reads: "a GPU consumer" / "a CPU consumer"; else None."""
    queue = queue_for(use_gpu=task.use_gpu)
    if task.status != "pending" or live.get(queue, 0):
        return None
    return f"a {_KIND.get(queue, queue)} consumer"


def task_status(session: Session, task: Task, *, stale_seconds: float, retention: Retention | None = None) -> TaskOut:
    """The status JSON of one task, with its queue position, what it waits for and when its output expires."""
    live = live_per_queue(session, stale_seconds=stale_seconds) if task.status == "pending" else {}
    position = crud.queue_position(session, task)
    return crud.task_out(task, position=position, waiting_for=waiting_for(task, live), retention=retention)


def tasks_out(
    session: Session, tasks: list[Task], *, stale_seconds: float, retention: Retention | None = None
) -> list[TaskOut]:
    """The status JSON of a page of tasks (without queue positions)."""
    live = live_per_queue(session, stale_seconds=stale_seconds)
    return [crud.task_out(t, waiting_for=waiting_for(t, live), retention=retention) for t in tasks]
