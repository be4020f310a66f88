"""Data access: plain functions over a session, one per thing the API does."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from common.schemas import FINAL_STATES, TaskOut
from private_api.auth import Caller
from private_api.errors import TaskNotFound
from private_api.leases import history_of
from private_api.orm import Model, Task, utcnow
from private_api.retention import Retention, expires_at

# --- tasks, as users see them ------------------------------------------------------------------------------------


def create_task(
    session: Session, *, uid: str, model: Model, owner: str | None, input_size: int, input_sha256: str
) -> Task:
    """Insert a pending, not yet published task that runs the model's current version.

    The version is read again under a share lock once the row is in (SQLite: inside the write transaction the
    insert began), so a new version committed meanwhile is the one the task runs, and a new version made after
    this waits for the commit: an old version's zip is never removed under a task that was about to name it.
    """
    task = Task(
        uid=uid,
        model_id=model.id,
        model_hid=model.human_readable_id,
        use_gpu=model.use_gpu,
        owner=owner,
        model_version=model.version,
        status="pending",
        deleted=False,
        attempt=0,
        input_size=input_size,
        input_sha256=input_sha256,
    )
    session.add(task)
    session.flush()
    current = session.scalar(select(Model.version).where(Model.id == model.id).with_for_update(read=True))
    if current is not None and current != task.model_version:
        task.model_version = current
        session.flush()
    return task


def get_task(session: Session, *, uid: str, caller: Caller | None = None) -> Task:
    """A task that exists, is not deleted and (when a caller is given) the caller may see; else TaskNotFound."""
    task = session.scalar(select(Task).where(Task.uid == uid))
    if task is None or task.deleted or (caller is not None and not caller.sees(task.owner)):
        raise TaskNotFound(f"no task {uid!r}")
    return task


def model_exists(session: Session, model_id: int | None) -> bool:
    """True when the model still exists."""
    return model_id is not None and session.get(Model, model_id) is not None


def task_expires_at(task: Task, retention: Retention) -> datetime | None:
    """When an ended task's output zip and log go (or went); None while it has not ended."""
    return expires_at(
        status=task.status, finished_at=task.finished_at, output_expired_at=task.output_expired_at, retention=retention
    )


# Built once: constructing a select costs far more than running it, and polling is the hottest call.
_POLL = (
    select(
        Task.status,
        Task.deleted,
        Task.owner,
        Task.error,
        Task.exit_code,
        Task.model_hid,
        Task.finished_at,
        Task.output_expired_at,
        Model.id.label("model_exists"),
    )
    .outerjoin(Model, Model.id == Task.model_id)
    .where(Task.uid == bindparam("uid"))
)


def poll(connection: Connection, *, uid: str) -> Any:
    """What polling a task needs, in one query: its state and whether its model still exists (a Row, or None)."""
    return connection.execute(_POLL, {"uid": uid}).first()


def queue_position(session: Session, task: Task) -> int | None:
    """1 for the next pending task of its queue, 2 for the one after...; None when not pending."""
    if task.status != "pending":
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Task)
        .where(Task.status == "pending", Task.id < task.id, Task.use_gpu == task.use_gpu, Task.deleted.is_(False))
    )
    return int(ahead or 0) + 1


def _phase(task: Task) -> dict[str, Any]:
    """A pending task is `queued` since it was created or given back; a final one is in no phase."""
    if task.status == "pending":
        since = task.phase_started_at if task.phase == "queued" else None
        return {"phase": "queued", "phase_started_at": since or task.created_at}
    if task.status == "running":
        return {"phase": task.phase or "preparing", "phase_started_at": task.phase_started_at or task.started_at}
    return {"phase": None, "phase_started_at": None}


def task_out(
    task: Task, *, position: int | None = None, waiting_for: str | None = None, retention: Retention | None = None
) -> TaskOut:
    """The status JSON of a task (`waiting_for`: the kind of consumer a pending task waits for, when none is live;
    `retention`: the settings' retention, which gives an ended task its `expires_at`)."""
    return TaskOut(
        uid=task.uid,
        model=task.model_hid,
        status=task.status,  # type: ignore[arg-type]
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        queue_position=position,
        attempt=task.attempt,
        exit_code=task.exit_code,
        error=task.error,
        consumer_id=task.consumer_id,
        input_size=task.input_size,
        output_size=task.output_size,
        consumer_name=task.consumer_name,
        waiting_for=waiting_for if task.status == "pending" else None,
        history=history_of(task),
        infra_retries=task.infra_retries,
        owner=task.owner,
        model_version=task.model_version,
        **_phase(task),
        progress=task.progress,
        progress_message=task.progress_message,
        provenance=json.loads(task.provenance) if task.provenance else None,
        callback_url=task.callback_url,
        webhook=webhook_out(task),
        expires_at=None if retention is None else task_expires_at(task, retention),
    )


def webhook_out(task: Task) -> dict[str, Any] | None:
    """The `webhook` of the status JSON (state, attempts, last_error, next_at, delivered_at); None without one."""
    if not task.callback_url:
        return None
    state = task.webhook_state or "pending"
    return {
        "url": task.callback_url,
        "state": state,
        "attempts": task.webhook_attempts or 0,
        "last_error": task.webhook_last_error,
        "next_at": task.webhook_next_at if state == "pending" and task.status in FINAL_STATES else None,
        "delivered_at": task.webhook_delivered_at,
    }


def list_tasks(
    session: Session,
    *,
    status: str | None,
    model: str | None,
    owner: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Task], int]:
    """A page of tasks, newest first, and how many match in all."""
    query = select(Task).where(Task.deleted.is_(False))
    if status:
        query = query.where(Task.status == status)
    if model:
        query = query.where(Task.model_hid == model)
    if owner is not None:
        query = query.where(Task.owner == owner)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Task.id.desc()).limit(limit).offset(offset))
    return list(rows), int(total)


def cancel_task(session: Session, task: Task) -> None:
    """Mark a task deleted; one that had not ended becomes cancelled (its consumer stops it on the next heartbeat).

    Compare-and-set on the status: a consumer that finishes the task at the same moment either wins (the task
    stays finished) or gets 409.
    """
    session.execute(
        update(Task)
        .where(Task.id == task.id, Task.status.not_in(FINAL_STATES))
        .values(status="cancelled", finished_at=utcnow(), error="cancelled by the user")
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Task).where(Task.id == task.id).values(deleted=True).execution_options(synchronize_session=False)
    )
    session.flush()
    session.refresh(task)


# --- counts ---------------------------------------------------------------------------------------------------------


def count_pending(session: Session, *, owner: str | None = None) -> int:
    """How many tasks wait to run (of this owner, when given)."""
    query = select(func.count()).select_from(Task).where(Task.status == "pending", Task.deleted.is_(False))
    if owner is not None:
        query = query.where(Task.owner == owner)
    return int(session.scalar(query) or 0)


def count_unpublished(session: Session) -> int:
    """How many pending tasks wait for the broker (not those that back off after an infrastructure failure)."""
    query = (
        select(func.count())
        .select_from(Task)
        .where(
            Task.published_at.is_(None),
            Task.status == "pending",
            or_(Task.not_before.is_(None), Task.not_before <= utcnow()),
        )
    )
    return int(session.scalar(query) or 0)
