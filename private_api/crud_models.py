"""Data access for models and their versions: every change of a model is a new version, and a task runs the version
that was current when it was submitted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.schemas import LIMIT_FIELDS, ModelLimits, ModelOut, ModelVersionOut
from private_api import audit
from private_api.auth import Caller
from private_api.errors import ModelExists, ModelNotFound
from private_api.orm import Model, ModelVersion, Task, utcnow

__all__ = [
    "ACTIVE",
    "VERSION_FIELDS",
    "active_tasks",
    "cancel_active_tasks",
    "create_model",
    "delete_model",
    "find_model",
    "get_model",
    "has_zip",
    "list_models",
    "needed_zips",
    "new_version",
    "task_model",
    "version_of",
    "versions_out",
]

# The fields a version copies from its model (the model row holds those of its current version).
VERSION_FIELDS = ("container_tag", "description", "use_gpu", "zip_sha256", "zip_size", *sorted(LIMIT_FIELDS))
ACTIVE = ("pending", "running")


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


def _add_version(session: Session, model: Model, caller: Caller) -> ModelVersion:
    """Record the model's current fields as its version `model.version`."""
    row = ModelVersion(
        model_id=model.id,
        version=model.version,
        created_at=utcnow(),
        created_by=caller.key_id,
        **{name: getattr(model, name) for name in VERSION_FIELDS},
    )
    session.add(row)
    session.flush()
    return row


def create_model(
    session: Session,
    *,
    hid: str,
    container_tag: str,
    description: str,
    use_gpu: bool,
    limits: ModelLimits,
    zip_sha256: str | None = None,
    zip_size: int | None = None,
    caller: Caller,
) -> Model:
    """Insert a model as its version 1 (with an audit row); ModelExists when the id is taken."""
    model = Model(
        human_readable_id=hid,
        container_tag=container_tag,
        description=description,
        use_gpu=use_gpu,
        zip_sha256=zip_sha256,
        zip_size=zip_size,
        version=1,
        **limits.model_dump(),
    )
    session.add(model)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise ModelExists(f"a model with human_readable_id {hid!r} exists already") from exc
    _add_version(session, model, caller)
    audit.record(session, caller, "model.create", hid, version=1, zip_sha256=zip_sha256)
    return model


def new_version(session: Session, model: Model, *, caller: Caller, **fields: Any) -> Model:
    """Make the model's next version: its fields changed as given (the rest as before), with an audit row.

    The version number is taken from the row as it is now (UPDATE ... SET version = version + 1), so two changes at
    the same moment make two versions, never one version twice.
    """
    unknown = set(fields) - set(VERSION_FIELDS)
    if unknown:
        raise ValueError(f"not fields of a model version: {sorted(unknown)}")
    now = utcnow()
    session.execute(
        update(Model)
        .where(Model.id == model.id)
        .values(version=Model.version + 1, updated_at=now, **fields)
        .execution_options(synchronize_session=False)
    )
    session.refresh(model)
    _add_version(session, model, caller)
    audit.record(
        session,
        caller,
        "model.update",
        model.human_readable_id,
        version=model.version,
        fields=sorted(fields),
        zip_sha256=model.zip_sha256,
    )
    return model


def version_of(session: Session, model: Model, version: int | None) -> ModelVersion | None:
    """The row of that version of the model (None for an unknown version, or for None)."""
    if version is None:
        return None
    return session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version)
    )


def task_model(session: Session, task: Task, model: Model) -> ModelOut:
    """The model as the task must run it: the fields of the version current at its submission."""
    out = ModelOut.model_validate(model)
    row = version_of(session, model, task.model_version)
    if row is None:  # a task older than versions (or a version row that is gone): the current fields
        return out
    fields = {name: getattr(row, name) for name in VERSION_FIELDS}
    return out.model_copy(update={**fields, "version": row.version, "model_available": row.zip_sha256 is not None})


def has_zip(session: Session, model: Model, sha256: str) -> bool:
    """True when a version of the model (the current one included) has this zip."""
    query = select(ModelVersion.id).where(ModelVersion.model_id == model.id, ModelVersion.zip_sha256 == sha256)
    return model.zip_sha256 == sha256 or session.scalar(query.limit(1)) is not None


def active_tasks(session: Session, model: Model) -> list[Task]:
    """The model's pending and running tasks (not cancelled or deleted), oldest first."""
    query = select(Task).where(Task.model_id == model.id, Task.status.in_(ACTIVE), Task.deleted.is_(False))
    return list(session.scalars(query.order_by(Task.id)))


def needed_zips(session: Session, model: Model) -> set[str]:
    """The zip sha256s of the model that must stay: its current one and those of versions an active task runs."""
    needed = {model.zip_sha256} if model.zip_sha256 else set()
    query = (
        select(ModelVersion.zip_sha256)
        .join(Task, (Task.model_id == ModelVersion.model_id) & (Task.model_version == ModelVersion.version))
        .where(
            ModelVersion.model_id == model.id,
            ModelVersion.zip_sha256.is_not(None),
            Task.status.in_(ACTIVE),
            Task.deleted.is_(False),
        )
        .distinct()
    )
    needed.update(sha for sha in session.scalars(query) if sha)
    return needed


def cancel_active_tasks(session: Session, model: Model, *, caller: Caller) -> list[str]:
    """Cancel the model's pending and running tasks (a running container is stopped on its next heartbeat), each
    with an audit row; their uids. The tasks stay visible: their status says why they were cancelled."""
    uids = []
    reason = f"cancelled: its model {model.human_readable_id!r} was deleted"
    for task in active_tasks(session, model):
        changed = session.execute(
            update(Task)
            .where(Task.id == task.id, Task.status.in_(ACTIVE))
            .values(status="cancelled", finished_at=utcnow(), error=reason)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount:  # type: ignore[attr-defined]
            audit.record(session, caller, "task.cancel", task.uid, reason="model deleted", status=task.status)
            uids.append(task.uid)
    return uids


def delete_model(session: Session, model: Model, *, caller: Caller, cancelled: int = 0) -> None:
    """Delete a model and its versions (with an audit row); its tasks keep their rows and answer 550 from now on."""
    audit.record(session, caller, "model.delete", model.human_readable_id, version=model.version, cancelled=cancelled)
    session.delete(model)
    session.flush()


def versions_out(session: Session, model: Model, *, stored: set[str]) -> list[ModelVersionOut]:
    """Every version of the model, newest first, with how many tasks run it (`stored`: the zips on disk)."""
    counts = select(
        Task.model_version,
        func.count().label("tasks"),
        func.sum(case((Task.status.in_(ACTIVE), 1), else_=0)).label("active"),
    ).where(Task.model_id == model.id, Task.deleted.is_(False))
    per_version = {
        row.model_version: (int(row.tasks), int(row.active or 0))
        for row in session.execute(counts.group_by(Task.model_version))
    }
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(ModelVersion.version.desc())
    )
    out = []
    for row in rows:
        tasks, active = per_version.get(row.version, (0, 0))
        fields = {name: getattr(row, name) for name in VERSION_FIELDS}
        out.append(
            ModelVersionOut(
                version=row.version,
                current=row.version == model.version,
                model_available=row.zip_sha256 is not None,
                zip_stored=row.zip_sha256 in stored if row.zip_sha256 else None,
                created_at=row.created_at,
                created_by=row.created_by,
                tasks=tasks,
                active_tasks=active,
                **fields,
            )
        )
    return out
