"""Tasks as consumers change them: claim, heartbeat, finish, release (each compare-and-set, see leases.py)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import or_
from sqlalchemy.orm import Session

from common.schemas import FINAL_STATES
from private_api.errors import Conflict
from private_api.leases import (
    InfraPolicy,
    LeaseRule,
    cas,
    dump,
    end,
    find,
    history_of,
    holds,
    stale,
    status_now,
    with_entry,
)
from private_api.orm import Model, Task, utcnow


def claim_task(
    session: Session, *, uid: str, consumer_id: str, consumer_name: str | None, rule: LeaseRule, max_attempts: int
) -> tuple[Task, Model]:
    """Hand a pending task, or one whose lease expired, to a consumer with the next attempt; else Conflict why not."""
    task = find(session, uid)
    if task.status in FINAL_STATES:
        raise Conflict(f"task is {task.status}", status=task.status)
    if task.deleted:
        raise Conflict("task is cancelled", status="cancelled")
    model = session.get(Model, task.model_id) if task.model_id is not None else None
    if model is None:
        end(session, task, status="failed", reason=f"its model {task.model_hid!r} was deleted")
        raise Conflict("task failed: its model was deleted", status="failed")
    now = utcnow()
    if task.status == "pending" and task.not_before is not None and task.not_before > now:
        raise Conflict(f"task waits until {task.not_before.isoformat()} (backoff)", status="pending")
    if task.status == "running" and not rule.expired(task.heartbeat_at, now):
        if task.consumer_id == consumer_id:  # its claim again (the first answer was lost): the same attempt
            return task, model
        raise Conflict("task is running on another consumer", status="running")
    history = history_of(task)
    if task.status == "running":  # the holder's lease expired: it is stale from now on
        reason = f"no heartbeat for {rule.seconds:g}s"
        history = with_entry(task, status="lost", reason=reason)
    if task.attempt >= max_attempts:
        last = history[-1]["reason"] if history else (task.error or "the consumer stopped mid-run")
        reason = f"gave up after {task.attempt} attempts; last problem: {last}"
        end(session, task, status="failed", reason=reason, history=dump(history))
        raise Conflict("task failed: no attempts left", status="failed")
    guard = (
        rule.expired_clause(now) if task.status == "running" else or_(Task.not_before.is_(None), Task.not_before <= now)
    )
    claimed = cas(
        session,
        task,
        guard,
        Task.deleted.is_(False),
        status="running",
        attempt=Task.attempt + 1,
        consumer_id=consumer_id,
        consumer_name=consumer_name,
        started_at=now,
        heartbeat_at=now,
        exit_code=None,
        error=None,
        not_before=None,
        history=dump(history),
        phase="preparing",
        phase_started_at=now,
        progress=None,
        progress_message=None,
    )
    if not claimed:
        status = status_now(session, task)
        raise Conflict(f"task changed meanwhile: it is {status}", status=status)
    session.commit()
    session.refresh(task)
    return task, model


def heartbeat(
    session: Session,
    *,
    uid: str,
    consumer_id: str,
    attempt: int,
    phase: str | None = None,
    progress: float | None = None,
    progress_message: str | None = None,
) -> str:
    """Renew the holder's lease and store its phase (started when it changes) and progress; `cancelled` tells it
    to stop; Conflict for a stale holder."""
    task = find(session, uid)
    if task.consumer_id == consumer_id and task.attempt == attempt and (task.status == "cancelled" or task.deleted):
        return "cancelled"
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now}
    if phase is not None and phase != task.phase:
        values.update(phase=phase, phase_started_at=now)
    if progress is not None:  # a beat without progress keeps the last one the model wrote
        values.update(progress=progress, progress_message=progress_message)
    if not holds(task, consumer_id, attempt) or not cas(session, task, **values):
        raise stale(session, task, consumer_id, attempt)
    session.commit()
    return "running"


def finish_task(
    session: Session,
    *,
    uid: str,
    consumer_id: str,
    attempt: int,
    status: str,
    reason: str | None,
    exit_code: int | None,
    output_size: int | None,
    provenance: dict[str, Any] | None = None,
) -> Task:
    """Store a task's final state as reported by its holder; Conflict for a stale holder.

    The holder's own repeated finish (its first answer was lost) answers as the first did, changing nothing.
    """
    task = find(session, uid)
    if task.status == status and task.consumer_id == consumer_id and task.attempt == attempt:
        return task
    if not holds(task, consumer_id, attempt):
        raise stale(session, task, consumer_id, attempt)
    history = dump(with_entry(task, status=status, reason=reason, exit_code=exit_code))
    values = {
        "status": status,
        "error": reason,
        "exit_code": exit_code,
        "output_size": output_size,
        "finished_at": utcnow(),
        "history": history,
    }
    if provenance is not None:
        values["provenance"] = json.dumps(provenance, separators=(",", ":"))
    if not cas(session, task, **values):
        raise stale(session, task, consumer_id, attempt)
    session.commit()
    session.refresh(task)
    return task


def _infra_summary(history: list[dict[str, Any]]) -> str:
    counts = Counter(str(e.get("reason")) for e in history if e.get("infrastructure"))
    parts = [f"{reason} ({count}x)" if count > 1 else reason for reason, count in counts.most_common(10)]
    return "; ".join(parts)[:4000]


def release_task(
    session: Session,
    *,
    uid: str,
    consumer_id: str,
    attempt: int,
    reason: str,
    infrastructure: bool,
    policy: InfraPolicy,
) -> Task:
    """Give a task back to the queue without using up its attempt; infrastructure releases back off and are bounded."""
    task = find(session, uid)
    if not holds(task, consumer_id, attempt):
        raise stale(session, task, consumer_id, attempt)
    now = utcnow()
    history = with_entry(task, status="released", reason=reason, infrastructure=infrastructure)
    retries = task.infra_retries + (1 if infrastructure else 0)
    values: dict[str, Any] = {"history": dump(history), "infra_retries": retries}
    if infrastructure and retries > policy.max_retries:
        summary = _infra_summary(history)
        values.update(
            status="failed",
            finished_at=now,
            error=f"gave up after {retries} failures of the infrastructure (not the model's): {summary}",
        )
    else:
        delay = policy.delay(retries) if infrastructure else 0.0
        values.update(
            status="pending",
            attempt=Task.attempt - 1,
            consumer_id=None,
            heartbeat_at=None,
            started_at=None,
            error=reason,
            published_at=None,
            not_before=now + timedelta(seconds=delay) if delay > 0 else None,
            phase="queued",
            phase_started_at=now,
            progress=None,
            progress_message=None,
        )
    if not cas(session, task, **values):
        raise stale(session, task, consumer_id, attempt)
    session.commit()
    session.refresh(task)
    return task
