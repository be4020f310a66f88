"""Leases on running tasks: the lease rule, compare-and-set changes, the reaper of expired leases, lease checks.

Every change is compare-and-set: `UPDATE tasks ... WHERE id = ? AND status = ? AND consumer_id = ? AND attempt = ?`
with the row count checked, so a holder whose lease was taken over (a stale holder) changes nothing, on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, false, or_, select, update
from sqlalchemy.orm import Session

from private_api.errors import Conflict, UnknownTask
from private_api.orm import Task, utcnow

_HISTORY_KEEP = 100


@dataclass
class LeaseRule:
    """A lease lasts `seconds` from the holder's last heartbeat, and at least `seconds` from `since`: this API's start,
    or the end of a database outage (during one no holder could renew its lease)."""

    seconds: float
    since: datetime

    def restart(self, now: datetime) -> None:
        """Count every lease from now at the earliest (the database is back after an outage)."""
        self.since = max(self.since, now)

    def cutoff(self, now: datetime) -> datetime | None:
        """Leases renewed before this have expired; None while this API is younger than one lease."""
        if now < self.since + timedelta(seconds=self.seconds):
            return None
        return now - timedelta(seconds=self.seconds)

    def expired(self, heartbeat_at: datetime | None, now: datetime) -> bool:
        """True when a lease last renewed at heartbeat_at has expired."""
        cutoff = self.cutoff(now)
        return cutoff is not None and (heartbeat_at is None or heartbeat_at < cutoff)

    def expired_clause(self, now: datetime) -> ColumnElement[bool]:
        """The same test as SQL, for a WHERE clause."""
        cutoff = self.cutoff(now)
        if cutoff is None:
            return false()
        return or_(Task.heartbeat_at.is_(None), Task.heartbeat_at < cutoff)


@dataclass(frozen=True)
class InfraPolicy:
    """How often and how late a task released for reasons of the host is tried again."""

    max_retries: int = 20
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 600.0

    def delay(self, retries: int) -> float:
        """Seconds to wait before the retries-th retry (1, 2, ...): doubling, capped."""
        return float(min(self.backoff_seconds * 2 ** max(retries - 1, 0), self.backoff_max_seconds))


# --- history ------------------------------------------------------------------------------------------------------


def history_of(task: Task) -> list[dict[str, Any]]:
    """The task's history entries (oldest first)."""
    try:
        entries = json.loads(task.history or "[]")
    except ValueError:
        return []
    return entries if isinstance(entries, list) else []


def with_entry(task: Task, *, status: str, reason: str | None, **more: Any) -> list[dict[str, Any]]:
    """The task's history with one entry added about its current attempt (the newest _HISTORY_KEEP kept)."""
    entry = {
        "attempt": task.attempt,
        "consumer": task.consumer_id,
        "consumer_name": task.consumer_name,
        "status": status,
        "reason": reason,
        "at": utcnow().isoformat(),
        **more,
    }
    return [*history_of(task), entry][-_HISTORY_KEEP:]


def dump(history: list[dict[str, Any]]) -> str:
    """History as stored in tasks.history."""
    return json.dumps(history)


# --- compare-and-set ------------------------------------------------------------------------------------------------


def find(session: Session, uid: str) -> Task:
    task = session.scalar(select(Task).where(Task.uid == uid))
    if task is None:
        raise UnknownTask(f"no task {uid!r}")
    return task


def cas(session: Session, task: Task, *guards: ColumnElement[bool], **values: Any) -> bool:
    """Change the row only if status, holder and attempt are still what `task` says (and the guards hold)."""
    holder = Task.consumer_id.is_(None) if task.consumer_id is None else Task.consumer_id == task.consumer_id
    result = session.execute(
        update(Task)
        .where(Task.id == task.id, Task.status == task.status, Task.attempt == task.attempt, holder, *guards)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def status_now(session: Session, task: Task) -> str:
    session.rollback()
    return str(session.scalar(select(Task.status).where(Task.id == task.id)) or "unknown")


def stale(session: Session, task: Task, consumer_id: str, attempt: int) -> Conflict:
    status = status_now(session, task)
    return Conflict(f"task is {status} and not held by {consumer_id!r} at attempt {attempt}", status=status)


def holds(task: Task, consumer_id: str, attempt: int) -> bool:
    return task.status == "running" and not task.deleted and task.consumer_id == consumer_id and task.attempt == attempt


def require_holder(session: Session, *, uid: str, consumer_id: str, attempt: int) -> Task:
    """The task, when it runs under this consumer instance and attempt; Conflict (409) for a stale holder."""
    task = find(session, uid)
    if not holds(task, consumer_id, attempt):
        raise Conflict(
            f"task is {task.status} and not held by {consumer_id!r} at attempt {attempt}", status=task.status
        )
    return task


def end(session: Session, task: Task, *, status: str, reason: str, history: str | None = None) -> bool:
    """Move a task to a final state (compare-and-set); True when it changed."""
    values: dict[str, Any] = {"status": status, "error": reason, "finished_at": utcnow()}
    if history is not None:
        values["history"] = history
    changed = cas(session, task, **values)
    session.commit()
    return changed


def reap_expired(session: Session, *, rule: LeaseRule, max_attempts: int, limit: int = 200) -> int:
    """Return running tasks whose lease expired to pending (marked for publish); fail those out of attempts."""
    now = utcnow()
    expired = rule.expired_clause(now)
    if rule.cutoff(now) is None:
        return 0
    reaped = 0
    for task in session.scalars(select(Task).where(Task.status == "running", expired).limit(limit)).all():
        history = with_entry(task, status="lost", reason=f"no heartbeat for {rule.seconds:g}s")
        if task.attempt >= max_attempts:
            lost = sum(1 for e in history if e.get("status") == "lost")
            values: dict[str, Any] = {
                "status": "failed",
                "finished_at": now,
                "error": f"consumer lost {lost} times (no heartbeat for {rule.seconds:g}s); "
                f"gave up after {task.attempt} attempts",
            }
        else:
            values = {"status": "pending", "consumer_id": None, "heartbeat_at": None, "published_at": None}
        reaped += cas(session, task, expired, history=dump(history), **values)
    session.commit()
    return reaped


def check_leases(session: Session, *, leases: list[tuple[str, str, int]], rule: LeaseRule) -> list[bool]:
    """For each (uid, consumer_id, attempt): does that instance hold that attempt under a live lease?"""
    now = utcnow()
    found: dict[str, Any] = {}
    uids = sorted({uid for uid, _, _ in leases})
    for start in range(0, len(uids), 500):
        query = select(Task.uid, Task.status, Task.deleted, Task.consumer_id, Task.attempt, Task.heartbeat_at)
        for found_row in session.execute(query.where(Task.uid.in_(uids[start : start + 500]))):
            found[found_row.uid] = found_row
    live = []
    for uid, consumer_id, attempt in leases:
        row = found.get(uid)
        live.append(
            row is not None
            and row.status == "running"
            and not row.deleted
            and row.consumer_id == consumer_id
            and row.attempt == attempt
            and not rule.expired(row.heartbeat_at, now)
        )
    return live
