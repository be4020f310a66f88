"""Data access: plain functions over a session, one per thing the API does."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from private_api.errors import Conflict, ModelExists, ModelNotFound, TaskNotFound, UnknownTask
from private_api.orm import Model, Task, utcnow
from private_api.schemas import FINAL_STATES, ModelLimits, TaskOut

# --- models -----------------------------------------------------------------------------------------------------


def find_model(session: Session, *, hid: str) -> Model | None:
    """The model with this human_readable_id, or None."""
    return session.scalar(select(Model).where(Model.human_readable_id == hid))


def get_model(session: Session, *, hid: str) -> Model:
    """The model with this human_readable_id, or ModelNotFound."""
    model = find_model(session, hid=hid)
    if model is None:
        raise ModelNotFound(f"no model with human_readable_id {hid!r}")
    return model


def list_models(session: Session) -> list[Model]:
    """All models, oldest first."""
    return list(session.scalars(select(Model).order_by(Model.id)))


def create_model(
    session: Session,
    *,
    hid: str,
    container_tag: str,
    description: str,
    use_gpu: bool,
    limits: ModelLimits,
) -> Model:
    """Insert a model (without its zip); ModelExists when the id is taken."""
    model = Model(
        human_readable_id=hid,
        container_tag=container_tag,
        description=description,
        use_gpu=use_gpu,
        **limits.model_dump(),
    )
    session.add(model)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise ModelExists(f"a model with human_readable_id {hid!r} exists already") from exc
    return model


def update_model(session: Session, model: Model, **fields: Any) -> Model:
    """Change the given fields of a model."""
    for name, value in fields.items():
        setattr(model, name, value)
    model.updated_at = utcnow()
    session.flush()
    return model


def delete_model(session: Session, model: Model) -> None:
    """Delete a model; its tasks keep their rows and answer 550 from now on."""
    session.delete(model)
    session.flush()


# --- tasks, as users see them ------------------------------------------------------------------------------------


def create_task(
    session: Session, *, uid: str, model: Model, owner: str | None, input_size: int, input_sha256: str
) -> Task:
    """Insert a pending, not yet published task."""
    task = Task(
        uid=uid,
        model_id=model.id,
        model_hid=model.human_readable_id,
        use_gpu=model.use_gpu,
        owner=owner,
        status="pending",
        deleted=False,
        attempt=0,
        input_size=input_size,
        input_sha256=input_sha256,
    )
    session.add(task)
    session.flush()
    return task


def get_task(session: Session, *, uid: str, owner: str | None = None) -> Task:
    """A task that exists, is not deleted and (when owner is given) belongs to owner; else TaskNotFound."""
    task = session.scalar(select(Task).where(Task.uid == uid))
    if task is None or task.deleted or (owner is not None and task.owner != owner):
        raise TaskNotFound(f"no task {uid!r}")
    return task


def model_exists(session: Session, model_id: int | None) -> bool:
    """True when the model still exists."""
    return model_id is not None and session.get(Model, model_id) is not None


# Built once: constructing a select costs far more than running it, and polling is the hottest call.
_POLL = (
    select(
        Task.status,
        Task.deleted,
        Task.owner,
        Task.error,
        Task.exit_code,
        Task.model_hid,
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


def task_out(task: Task, *, position: int | None = None) -> TaskOut:
    """The status JSON of a task."""
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
    )


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
    """Mark a task deleted; one that had not ended becomes cancelled (its consumer stops it on the next heartbeat)."""
    if task.status not in FINAL_STATES:
        task.status = "cancelled"
        task.finished_at = utcnow()
        task.error = "cancelled by the user"
    task.deleted = True
    session.flush()


# --- the outbox ---------------------------------------------------------------------------------------------------


def unpublished_tasks(session: Session, *, limit: int) -> list[Task]:
    """Pending tasks whose uid has not been confirmed by the broker yet, oldest first."""
    query = (
        select(Task)
        .where(Task.published_at.is_(None), Task.status == "pending", Task.deleted.is_(False))
        .order_by(Task.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def count_pending(session: Session) -> int:
    """How many tasks wait to run."""
    query = select(func.count()).select_from(Task).where(Task.status == "pending", Task.deleted.is_(False))
    return int(session.scalar(query) or 0)


def count_unpublished(session: Session) -> int:
    """How many pending tasks wait for the broker."""
    query = select(func.count()).select_from(Task).where(Task.published_at.is_(None), Task.status == "pending")
    return int(session.scalar(query) or 0)


def mark_published(session: Session, *, task_id: int) -> None:
    """Record that the broker confirmed a task's message."""
    session.execute(update(Task).where(Task.id == task_id).values(published_at=utcnow()))


# --- tasks, as consumers see them ---------------------------------------------------------------------------------


def _fail(session: Session, task: Task, reason: str) -> None:
    task.status = "failed"
    task.error = reason
    task.finished_at = utcnow()
    session.flush()


def claim_task(
    session: Session, *, uid: str, consumer_id: str, lease_seconds: float, max_attempts: int
) -> tuple[Task, Model]:
    """Hand a task to a consumer with the next attempt number, or Conflict saying why it must not run now."""
    task = session.scalar(select(Task).where(Task.uid == uid))
    if task is None:
        raise UnknownTask(f"no task {uid!r}")
    if task.deleted and task.status not in FINAL_STATES:
        task.status = "cancelled"
    if task.status in FINAL_STATES:
        raise Conflict(f"task is {task.status}", status=task.status)
    model = session.get(Model, task.model_id) if task.model_id is not None else None
    if model is None:
        _fail(session, task, f"its model {task.model_hid!r} was deleted")
        session.commit()
        raise Conflict("task failed: its model was deleted", status="failed")
    now = utcnow()
    if task.status == "running":
        stale = task.heartbeat_at is None or task.heartbeat_at < now - timedelta(seconds=lease_seconds)
        if not stale and task.consumer_id != consumer_id:
            raise Conflict("task is running on another consumer", status="running")
    if task.attempt >= max_attempts:
        last = task.error or "the consumer stopped mid-run"
        _fail(session, task, f"gave up after {task.attempt} attempts; last problem: {last}")
        session.commit()
        raise Conflict("task failed: no attempts left", status="failed")
    claimed = session.execute(
        update(Task)
        .where(Task.id == task.id, Task.status == task.status, Task.attempt == task.attempt)
        .values(
            status="running",
            attempt=Task.attempt + 1,
            consumer_id=consumer_id,
            started_at=now,
            heartbeat_at=now,
            exit_code=None,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise Conflict("task was claimed by another consumer", status="running")
    session.commit()
    session.refresh(task)
    return task, model


def _held(session: Session, *, uid: str, consumer_id: str) -> Task:
    task = session.scalar(select(Task).where(Task.uid == uid))
    if task is None:
        raise UnknownTask(f"no task {uid!r}")
    if task.status != "running" or task.consumer_id != consumer_id:
        raise Conflict(f"task is {task.status} and not held by {consumer_id!r}", status=task.status)
    return task


def heartbeat(session: Session, *, uid: str, consumer_id: str) -> str:
    """Renew a consumer's lease on a running task; the answer is the task's status (cancelled: stop it)."""
    task = session.scalar(select(Task).where(Task.uid == uid))
    if task is None:
        raise UnknownTask(f"no task {uid!r}")
    if task.status == "cancelled" or task.deleted:
        return "cancelled"
    task = _held(session, uid=uid, consumer_id=consumer_id)
    task.heartbeat_at = utcnow()
    session.flush()
    return task.status


def finish_task(
    session: Session,
    *,
    uid: str,
    consumer_id: str,
    status: str,
    reason: str | None,
    exit_code: int | None,
    output_size: int | None,
) -> Task:
    """Store a task's final state as reported by the consumer that holds it."""
    task = _held(session, uid=uid, consumer_id=consumer_id)
    task.status = status
    task.error = reason
    task.exit_code = exit_code
    task.output_size = output_size
    task.finished_at = utcnow()
    session.flush()
    return task


def release_task(session: Session, *, uid: str, consumer_id: str, reason: str) -> Task:
    """Give a running task back to the queue; the attempt counts, so a task that keeps failing ends."""
    task = _held(session, uid=uid, consumer_id=consumer_id)
    task.status = "pending"
    task.consumer_id = None
    task.heartbeat_at = None
    task.started_at = None
    task.error = reason
    session.flush()
    return task
