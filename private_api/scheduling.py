"""Fair order at claim time: which pending task of a queue a consumer is handed.

A queue message names one task, but the consumer that took it is handed the task that is fairest to run now:
round robin across owners (the owner whose last start is oldest goes first; owners that never started anything go
first, oldest waiting task breaking ties), FIFO within an owner (its oldest due task), and owners already running
their key's `max_running_tasks` are skipped (their tasks wait while other owners' tasks run). Only tasks of the
message's queue are considered, so a GPU task never goes to a CPU consumer. The task the message named but that was
not handed out is marked for publishing again (see crud_tasks.claim_task).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from private_api.orm import ApiKey, Task

__all__ = ["Choice", "choose", "owner_key"]

_NEVER = datetime.min.replace(tzinfo=UTC)


def owner_key(owner: str | None) -> str:
    """The owner as the scheduler groups it: tasks made while the service was open form the group ""."""
    return owner or ""


def _of(key: str) -> ColumnElement[bool]:
    """Tasks of one owner group."""
    return Task.owner.is_(None) if key == "" else Task.owner == key


@dataclass(frozen=True)
class Choice:
    """The task to hand out (None: every owner with a due task runs its maximum), and the owners at their maximum."""

    task_id: int | None
    capped: frozenset[str]
    running: dict[str, int]
    limits: dict[str, int]


def _heads(session: Session, *, use_gpu: bool, now: datetime, exclude: set[int]) -> dict[str, int]:
    """Per owner group: the id of its oldest pending task of this queue that may run now."""
    group = func.coalesce(Task.owner, "")
    query = (
        select(group, func.min(Task.id))
        .where(
            Task.status == "pending",
            Task.deleted.is_(False),
            Task.use_gpu == use_gpu,
            Task.model_id.is_not(None),
            or_(Task.not_before.is_(None), Task.not_before <= now),
        )
        .group_by(group)
    )
    if exclude:
        query = query.where(Task.id.not_in(sorted(exclude)))
    return {str(key): int(task_id) for key, task_id in session.execute(query)}


def _limits(session: Session, owners: list[str]) -> dict[str, int]:
    """max_running_tasks of the owners whose key has one (bootstrap keys and an open service have none)."""
    named = [owner for owner in owners if owner]
    if not named:
        return {}
    query = select(ApiKey.id, ApiKey.max_running_tasks).where(
        ApiKey.id.in_(named), ApiKey.max_running_tasks.is_not(None)
    )
    return {str(key_id): int(limit or 0) for key_id, limit in session.execute(query)}


def _running(session: Session, owners: list[str]) -> dict[str, int]:
    """How many tasks each of these owners runs now."""
    if not owners:
        return {}
    group = func.coalesce(Task.owner, "")
    query = select(group, func.count()).where(Task.status == "running", group.in_(owners)).group_by(group)
    return {str(key): int(count) for key, count in session.execute(query)}


def _last_start(session: Session, key: str) -> datetime:
    """When the owner's most recent task started (an index lookup on owner, started_at)."""
    started = session.scalar(select(func.max(Task.started_at)).where(_of(key)))
    if started is None:
        return _NEVER
    return started if started.tzinfo is not None else started.replace(tzinfo=UTC)


def choose(session: Session, *, use_gpu: bool, now: datetime, exclude: set[int] | None = None) -> Choice:
    """The fairest task of this queue to start now (tasks in `exclude` left out)."""
    heads = _heads(session, use_gpu=use_gpu, now=now, exclude=exclude or set())
    owners = sorted(heads)
    limits = _limits(session, owners)
    running = _running(session, sorted(limits))
    capped = frozenset(owner for owner, limit in limits.items() if running.get(owner, 0) >= limit)
    eligible = [owner for owner in owners if owner not in capped]
    if not eligible:
        return Choice(task_id=None, capped=capped, running=running, limits=limits)
    first = min(eligible, key=lambda owner: (_last_start(session, owner), heads[owner]))
    return Choice(task_id=heads[first], capped=capped, running=running, limits=limits)
