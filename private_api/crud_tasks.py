"""Tasks as consumers change them: claim, heartbeat, finish, release (each compare-and-set, see leases.py)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from common.schemas import FINAL_STATES
from private_api import scheduling
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

# How often a claim chooses again when another consumer took its choice first.
_CHOICE_TRIES = 3


def _held(session: Session, uid: str, consumer_id: str, rule: LeaseRule) -> tuple[Task, Model] | None:
    """The task this consumer instance holds under a live lease after claiming with the message of `uid`: its own
    claim again, whose first answer was lost (the task it was handed need not be the one the message named)."""
    now = utcnow()
    query = select(Task).where(
        Task.status == "running",
        Task.consumer_id == consumer_id,
        Task.deleted.is_(False),
        or_(Task.uid == uid, Task.claimed_for == uid),
    )
    for task in session.scalars(query.order_by(Task.started_at.desc()).limit(1)):
        model = session.get(Model, task.model_id) if task.model_id is not None else None
        if model is not None and not rule.expired(task.heartbeat_at, now):
            return task, model
    return None


def _claimable(session: Session, task: Task) -> Model:
    """The task's model when the task may be handed out at all; else Conflict why not (a task whose model is gone
    fails here)."""
    if task.status in FINAL_STATES:
        raise Conflict(f"task is {task.status}", status=task.status)
    if task.deleted:
        raise Conflict("task is cancelled", status="cancelled")
    model = session.get(Model, task.model_id) if task.model_id is not None else None
    if model is None:
        end(session, task, status="failed", reason=f"its model {task.model_hid!r} was deleted")
        raise Conflict("task failed: its model was deleted", status="failed")
    return model


def _take(
    session: Session,
    task: Task,
    model: Model,
    *,
    consumer_id: str,
    consumer_name: str | None,
    rule: LeaseRule,
    max_attempts: int,
    claimed_for: str,
) -> tuple[Task, Model]:
    """Start the next attempt of a pending task, or of one whose lease expired (compare-and-set); else Conflict."""
    now = utcnow()
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
        claimed_for=claimed_for,
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


def _publish_again(session: Session, task: Task, *, wait_seconds: float) -> None:
    """Mark a pending task the claim did not hand out for publishing again (after wait_seconds, when given)."""
    values: dict[str, Any] = {"published_at": None}
    if wait_seconds > 0:
        values["not_before"] = utcnow() + timedelta(seconds=wait_seconds)
    session.execute(
        update(Task)
        .where(Task.id == task.id, Task.status == "pending")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _fresh(session: Session, task_id: int) -> Task | None:
    return session.scalar(select(Task).where(Task.id == task_id).execution_options(populate_existing=True))


def _claim_fairly(
    session: Session,
    named: Task,
    *,
    wait_seconds: float,
    **holder: Any,
) -> tuple[Task, Model]:
    """Hand out the fairest pending task of the named task's queue (scheduling.py); the named one is published again
    when another was handed out, and waits `wait_seconds` when its owner runs its maximum already."""
    named_id, named_owner = named.id, scheduling.owner_key(named.owner)
    tried: set[int] = set()
    choice = None
    for _ in range(_CHOICE_TRIES):
        choice = scheduling.choose(session, use_gpu=named.use_gpu, now=utcnow(), exclude=tried)
        if choice.task_id is None or choice.task_id == named_id:
            break
        tried.add(choice.task_id)
        other = _fresh(session, choice.task_id)
        if other is None:
            continue
        try:
            handed = _take(session, other, _claimable(session, other), **holder)
        except Conflict:
            continue  # another consumer took it meanwhile (or it just failed): choose again
        named_task = _fresh(session, named_id)
        if named_task is not None:
            _publish_again(session, named_task, wait_seconds=wait_seconds if named_owner in choice.capped else 0)
        return handed
    if choice is not None and named_owner in choice.capped:
        limit = choice.limits.get(named_owner, 0)
        _publish_again(session, named, wait_seconds=wait_seconds)
        raise Conflict(
            f"its key runs {choice.running.get(named_owner, 0)} tasks, its max_running_tasks ({limit}): it waits",
            status="pending",
        )
    task = _fresh(session, named_id)
    if task is None:
        raise Conflict("task changed meanwhile: it is gone", status="unknown")
    return _take(session, task, _claimable(session, task), **holder)


def claim_task(
    session: Session,
    *,
    uid: str,
    consumer_id: str,
    consumer_name: str | None,
    rule: LeaseRule,
    max_attempts: int,
    wait_seconds: float = 5.0,
) -> tuple[Task, Model]:
    """Hand a consumer the next attempt of a task: for a pending one, the fairest pending task of its queue (maybe
    another than the message named); a task whose lease expired is taken over; else Conflict why not."""
    held = _held(session, uid, consumer_id, rule)
    if held is not None:  # its claim again (the first answer was lost): the same task and attempt
        return held
    task = find(session, uid)
    model = _claimable(session, task)
    now = utcnow()
    holder: dict[str, Any] = {
        "consumer_id": consumer_id,
        "consumer_name": consumer_name,
        "rule": rule,
        "max_attempts": max_attempts,
        "claimed_for": uid,
    }
    if task.status == "pending":
        if task.not_before is not None and task.not_before > now:
            raise Conflict(f"task waits until {task.not_before.isoformat()} (backoff)", status="pending")
        return _claim_fairly(session, task, wait_seconds=wait_seconds, **holder)
    if task.status == "running" and not rule.expired(task.heartbeat_at, now):
        raise Conflict("task is running on another consumer", status="running")
    return _take(session, task, model, **holder)


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
