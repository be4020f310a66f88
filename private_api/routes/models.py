"""Model routes: register, list, show, update, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from common.openapi import MODEL_POST_ANSWERS, answers, zip_form
from common.schemas import ModelIn, ModelOut, ModelUpdate
from private_api import audit, crud, crud_consumers
from private_api.auth import AdminDep, Authenticated, Caller
from private_api.deps import InternalAuth, SessionDep, SessionsDep, SettingsDep, StorageDep
from private_api.errors import InvalidRequest, ModelExists
from private_api.routes.uploads import disk_errors, receive_zip
from private_api.storage import Received, Storage, land

router = APIRouter(prefix="/api/models", tags=["models"], dependencies=[InternalAuth, Authenticated])


def _refuse_taken(sessions: sessionmaker[Session], hid: str) -> None:
    """ModelExists before the body is read (a short session: none is held while it streams)."""
    with sessions() as session:
        if crud.find_model(session, hid=hid) is not None:
            raise ModelExists(f"a model with human_readable_id {hid!r} exists already")


def _store_new(
    sessions: sessionmaker[Session],
    storage: Storage,
    model_in: ModelIn,
    zip_in: Received | None,
    stale: float,
    caller: Caller,
) -> ModelOut:
    """Insert the model and land its zip, in one short session."""
    final = None
    with disk_errors(), sessions() as session:
        model = crud.create_model(
            session,
            hid=model_in.human_readable_id,
            container_tag=model_in.container_tag,
            description=model_in.description,
            use_gpu=model_in.use_gpu,
            limits=model_in.limits(),
        )
        try:
            if zip_in is not None:
                final = storage.model_zip_path(model.id, zip_in.sha256)
                land(zip_in.path, final)
                crud.update_model(session, model, zip_sha256=zip_in.sha256, zip_size=zip_in.size)
            audit.record(
                session, caller, "model.create", model.human_readable_id, version=model.version, zip=model.zip_sha256
            )
            session.commit()
        except BaseException:
            session.rollback()
            if final is not None:
                final.unlink(missing_ok=True)
            raise
        return crud_consumers.model_out(model, crud_consumers.live_per_queue(session, stale_seconds=stale))


@router.post(
    "", response_model=ModelOut, openapi_extra=zip_form(required=False), responses=answers(*MODEL_POST_ANSWERS, 401)
)
async def create_model(
    request: Request,
    model_in: Annotated[ModelIn, Query()],
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
    caller: AdminDep,
) -> ModelOut:
    """Register a model: a docker image, its run limits and an optional model zip mounted at /model."""
    await run_in_threadpool(_refuse_taken, sessions, model_in.human_readable_id)
    zip_in = await receive_zip(request, storage=storage, settings=settings)
    try:
        if model_in.model_available and zip_in is None:
            raise InvalidRequest("model_available=true needs a zip_file")
        return await run_in_threadpool(
            _store_new, sessions, storage, model_in, zip_in, settings.consumer_stale_seconds, caller
        )
    finally:
        if zip_in is not None:
            zip_in.path.unlink(missing_ok=True)


@router.get("", response_model=list[ModelOut], responses=answers(401))
def list_models(session: SessionDep, settings: SettingsDep) -> list[ModelOut]:
    """All registered models."""
    return crud_consumers.models_out(session, crud.list_models(session), stale_seconds=settings.consumer_stale_seconds)


@router.get("/{hid}", response_model=ModelOut, responses=answers(401, 550))
def get_model(hid: str, session: SessionDep, settings: SettingsDep) -> ModelOut:
    """One model by its human_readable_id."""
    model = crud.get_model(session, hid=hid)
    return crud_consumers.models_out(session, [model], stale_seconds=settings.consumer_stale_seconds)[0]


def _check_update(sessions: sessionmaker[Session], hid: str, update: ModelUpdate, has_zip: bool) -> None:
    """ModelNotFound, or InvalidRequest for model_available=true without any zip (short sessions)."""
    with sessions() as session:
        model = crud.get_model(session, hid=hid)
        if update.model_available and not has_zip and not model.model_available:
            raise InvalidRequest("model_available=true needs a zip_file")


def _store_update(
    sessions: sessionmaker[Session],
    storage: Storage,
    hid: str,
    update: ModelUpdate,
    zip_in: Received | None,
    stale: float,
    caller: Caller,
) -> ModelOut:
    """Change the model's fields and zip in one short session; the replaced zip is removed once committed."""
    fields = update.changes()
    drop_zip = update.model_available is False and zip_in is None
    final = None
    with disk_errors(), sessions() as session:
        model = crud.get_model(session, hid=hid)
        old = storage.model_zip_path(model.id, model.zip_sha256) if model.zip_sha256 else None
        try:
            if zip_in is not None:
                final = storage.model_zip_path(model.id, zip_in.sha256)
                land(zip_in.path, final)
                fields.update(zip_sha256=zip_in.sha256, zip_size=zip_in.size)
            elif drop_zip:
                fields.update(zip_sha256=None, zip_size=None)
            crud.update_model(session, model, **fields)
            audit.record(session, caller, "model.update", hid, fields=sorted(fields))
            session.commit()
            out = crud_consumers.model_out(model, crud_consumers.live_per_queue(session, stale_seconds=stale))
        except BaseException:
            session.rollback()
            if final is not None and final != old:
                final.unlink(missing_ok=True)
            raise
    if old is not None and old != final and (zip_in is not None or drop_zip):
        old.unlink(missing_ok=True)
    return out


@router.patch(
    "/{hid}",
    response_model=ModelOut,
    openapi_extra=zip_form(required=False),
    responses=answers(*MODEL_POST_ANSWERS, 401, 550),
)
async def update_model(
    hid: str,
    request: Request,
    update: Annotated[ModelUpdate, Query()],
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
    caller: AdminDep,
) -> ModelOut:
    """Change a model's fields; a new zip_file replaces its zip, model_available=false removes it."""
    await run_in_threadpool(_check_update, sessions, hid, update, True)
    zip_in = await receive_zip(request, storage=storage, settings=settings)
    try:
        if zip_in is None:
            await run_in_threadpool(_check_update, sessions, hid, update, False)
        return await run_in_threadpool(
            _store_update, sessions, storage, hid, update, zip_in, settings.consumer_stale_seconds, caller
        )
    finally:
        if zip_in is not None:
            zip_in.path.unlink(missing_ok=True)


@router.delete("/{hid}", responses=answers(401, 550))
def delete_model(hid: str, session: SessionDep, storage: StorageDep, caller: AdminDep) -> dict[str, str]:
    """Delete a model and its zip; its tasks answer 550 from now on."""
    model = crud.get_model(session, hid=hid)
    zip_path = storage.model_zip_path(model.id, model.zip_sha256) if model.zip_sha256 else None
    crud.delete_model(session, model)
    audit.record(session, caller, "model.delete", hid)
    session.commit()
    if zip_path is not None:
        zip_path.unlink(missing_ok=True)
    return {"detail": f"model {hid!r} deleted"}
