"""The outbox in the tasks table: which pending tasks to publish (again), and recording that they were."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, false, func, or_, select, update
from sqlalchemy.orm import Session

from common.messages import queue_for
from private_api.orm import Task


def due_tasks(
    session: Session, *, now: datetime, republish_before: datetime, republish_gpu: list[bool], limit: int
) -> list[Task]:
    """Pending tasks to publish now, oldest first, locked against other private API instances (PostgreSQL).

    Due: never published (or marked for publish again by a release or the reaper) and past their `not_before`;
    and, for the resource classes in `republish_gpu` (whose queue lacks messages), published before
    `republish_before` and still not claimed.
    """
    republish = (
        and_(Task.published_at < republish_before, Task.use_gpu.in_(republish_gpu)) if republish_gpu else false()
    )
    query = (
        select(Task)
        .where(
            Task.status == "pending",
            Task.deleted.is_(False),
            or_(Task.not_before.is_(None), Task.not_before <= now),
            or_(Task.published_at.is_(None), republish),
        )
        .order_by(Task.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # SQLite has no row locks and ignores it
    )
    return list(session.scalars(query))


def mark_published(session: Session, *, task_ids: list[int], at: datetime) -> None:
    """Record that the broker confirmed these tasks' messages; not for a task released meanwhile to back off (its
    message came too early: it is published again when due)."""
    if task_ids:
        session.execute(
            update(Task)
            .where(Task.id.in_(task_ids), Task.status == "pending")
            .where(or_(Task.not_before.is_(None), Task.not_before <= at))
            .values(published_at=at)
            .execution_options(synchronize_session=False)
        )


def waiting_published(session: Session) -> dict[str, int]:
    """Per queue name: how many pending tasks have a message in it (or should have)."""
    query = (
        select(Task.use_gpu, func.count())
        .where(Task.status == "pending", Task.deleted.is_(False), Task.published_at.is_not(None))
        .group_by(Task.use_gpu)
    )
    return {queue_for(use_gpu=bool(use_gpu)): int(count) for use_gpu, count in session.execute(query)}
