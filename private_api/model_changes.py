"""Storing a model change in one short session each: a new model (version 1), a new version, a deletion.

Each runs in a worker thread after the zip (if any) was received; none holds a session while a body streams.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from common.schemas import ModelIn, ModelOut
from private_api import crud_consumers, crud_models, model_zips
from private_api.auth import Caller
from private_api.errors import InvalidRequest, ModelExists, ModelInUse
from private_api.orm import Model
from private_api.routes.uploads import disk_errors
from private_api.storage import Received, Storage, land

__all__ = ["check_change", "delete", "refuse_taken", "store_new", "store_version"]


def refuse_taken(sessions: sessionmaker[Session], hid: str) -> None:
    """ModelExists before the body is read (a short session: none is held while it streams)."""
    with sessions() as session:
        if crud_models.find_model(session, hid=hid) is not None:
            raise ModelExists(f"a model with human_readable_id {hid!r} exists already")


def check_change(sessions: sessionmaker[Session], hid: str, model_available: bool | None, has_zip: bool) -> None:
    """ModelNotFound, or InvalidRequest for model_available=true without any zip (short sessions)."""
    with sessions() as session:
        model = crud_models.get_model(session, hid=hid)
        if model_available and not has_zip and not model.model_available:
            raise InvalidRequest("model_available=true needs a zip_file (the model has none stored)")


def _out(session: Session, model: Model, stale: float) -> ModelOut:
    return crud_consumers.model_out(model, crud_consumers.live_per_queue(session, stale_seconds=stale))


def store_new(
    sessions: sessionmaker[Session],
    storage: Storage,
    model_in: ModelIn,
    zip_in: Received | None,
    stale: float,
    caller: Caller,
) -> ModelOut:
    """Insert the model as version 1 and land its zip, in one short session."""
    final = None
    with disk_errors(), sessions() as session, model_zips.changing():
        model = crud_models.create_model(
            session,
            hid=model_in.human_readable_id,
            container_tag=model_in.container_tag,
            description=model_in.description,
            use_gpu=model_in.use_gpu,
            limits=model_in.limits(),
            zip_sha256=zip_in.sha256 if zip_in else None,
            zip_size=zip_in.size if zip_in else None,
            caller=caller,
        )
        try:
            if zip_in is not None:
                final = storage.model_zip_path(model.id, zip_in.sha256)
                land(zip_in.path, final)
            session.commit()
        except BaseException:
            session.rollback()
            if final is not None:
                final.unlink(missing_ok=True)
            raise
        return _out(session, model, stale)


def store_version(
    sessions: sessionmaker[Session],
    storage: Storage,
    hid: str,
    fields: dict[str, Any],
    *,
    model_available: bool | None,
    zip_in: Received | None,
    stale: float,
    caller: Caller,
) -> ModelOut:
    """Make the model's next version with these fields and zip; zips no task needs any more go once committed.

    No zip and model_available unset (or true): the zip stays. model_available=false: the new version has none.
    """
    fields = dict(fields)
    with disk_errors(), sessions() as session:
        model = crud_models.get_model(session, hid=hid)
        with model_zips.changing():
            final = None
            try:
                if zip_in is not None:
                    final = storage.model_zip_path(model.id, zip_in.sha256)
                    if final.exists():  # the same zip as an earlier version's: keep that file
                        final = None
                    else:
                        land(zip_in.path, final)
                    fields.update(zip_sha256=zip_in.sha256, zip_size=zip_in.size)
                elif model_available is False:
                    fields.update(zip_sha256=None, zip_size=None)
                crud_models.new_version(session, model, caller=caller, **fields)
                session.commit()
            except BaseException:
                session.rollback()
                if final is not None:
                    final.unlink(missing_ok=True)
                raise
        model_zips.prune(session, storage, model)
        return _out(session, model, stale)


def delete(session: Session, storage: Storage, hid: str, *, force: bool, caller: Caller) -> dict[str, Any]:
    """Delete a model: ModelInUse while tasks are pending or running, unless force (which cancels them)."""
    model = crud_models.get_model(session, hid=hid)
    active = crud_models.active_tasks(session, model)
    if active and not force:
        running = sum(1 for t in active if t.status == "running")
        raise ModelInUse(
            f"model {hid!r} has {len(active) - running} pending and {running} running task(s); wait for them, "
            "or delete with ?force=true to cancel them",
            pending=len(active) - running,
            running=running,
        )
    cancelled = crud_models.cancel_active_tasks(session, model, caller=caller) if active else []
    model_id = model.id
    crud_models.delete_model(session, model, caller=caller, cancelled=len(cancelled))
    session.commit()
    model_zips.remove_all(storage, model_id)
    return {"detail": f"model {hid!r} deleted", "cancelled": cancelled}
