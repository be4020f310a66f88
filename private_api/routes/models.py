"""Model routes: register, list, show (with versions), new version (PUT, PATCH), delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from common.openapi import MODEL_POST_ANSWERS, answers, zip_form
from common.schemas import ModelIn, ModelOut, ModelPut, ModelUpdate
from private_api import crud_consumers, crud_models
from private_api.auth import AdminDep, Authenticated, Caller
from private_api.deps import InternalAuth, SessionDep, SessionsDep, SettingsDep, StorageDep
from private_api.errors import InvalidRequest
from private_api.model_changes import check_change, delete, refuse_taken, store_new, store_version
from private_api.routes.uploads import receive_zip

router = APIRouter(prefix="/api/models", tags=["models"], dependencies=[InternalAuth, Authenticated])


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
    """Register a model: a docker image, its run limits and an optional model zip mounted at /model (version 1)."""
    await run_in_threadpool(refuse_taken, sessions, model_in.human_readable_id)
    zip_in = await receive_zip(request, storage=storage, settings=settings)
    try:
        if model_in.model_available and zip_in is None:
            raise InvalidRequest("model_available=true needs a zip_file")
        return await run_in_threadpool(
            store_new, sessions, storage, model_in, zip_in, settings.consumer_stale_seconds, caller
        )
    finally:
        if zip_in is not None:
            zip_in.path.unlink(missing_ok=True)


@router.get("", response_model=list[ModelOut], responses=answers(401))
def list_models(session: SessionDep, settings: SettingsDep) -> list[ModelOut]:
    """All registered models (their current versions)."""
    models = crud_models.list_models(session)
    return crud_consumers.models_out(session, models, stale_seconds=settings.consumer_stale_seconds)


@router.get("/{hid}", response_model=ModelOut, responses=answers(401, 550))
def get_model(hid: str, session: SessionDep, settings: SettingsDep, storage: StorageDep) -> ModelOut:
    """One model by its human_readable_id, with every version (newest first) and how many tasks run each."""
    model = crud_models.get_model(session, hid=hid)
    out = crud_consumers.models_out(session, [model], stale_seconds=settings.consumer_stale_seconds)[0]
    versions = crud_models.versions_out(session, model, stored=set(storage.model_zips(model.id)))
    return out.model_copy(update={"versions": versions})


async def _new_version(
    request: Request,
    hid: str,
    fields: dict[str, Any],
    model_available: bool | None,
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
    caller: Caller,
) -> ModelOut:
    """Receive the optional zip and store the next version (the model is looked up before the body is read)."""
    await run_in_threadpool(check_change, sessions, hid, model_available, True)
    zip_in = await receive_zip(request, storage=storage, settings=settings)
    try:
        if zip_in is not None and model_available is False:
            raise InvalidRequest("model_available=false with a zip_file: send one or the other")
        if zip_in is None:
            await run_in_threadpool(check_change, sessions, hid, model_available, False)
        return await run_in_threadpool(
            lambda: store_version(
                sessions,
                storage,
                hid,
                fields,
                model_available=model_available,
                zip_in=zip_in,
                stale=settings.consumer_stale_seconds,
                caller=caller,
            )
        )
    finally:
        if zip_in is not None:
            zip_in.path.unlink(missing_ok=True)


@router.put(
    "/{hid}",
    response_model=ModelOut,
    openapi_extra=zip_form(required=False),
    responses=answers(*MODEL_POST_ANSWERS, 401, 403, 550),
)
async def put_model(
    hid: str,
    request: Request,
    put: Annotated[ModelPut, Query()],
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
    caller: AdminDep,
) -> ModelOut:
    """A new version of the model with these fields (left out: their defaults, as when posting it); the zip stays
    unless a new zip_file replaces it or model_available=false removes it. Tasks already submitted keep theirs."""
    if put.human_readable_id not in (None, hid):
        raise InvalidRequest("the human_readable_id of the query differs from the path's; it cannot be changed")
    return await _new_version(request, hid, put.fields(), put.model_available, sessions, settings, storage, caller)


@router.patch(
    "/{hid}",
    response_model=ModelOut,
    openapi_extra=zip_form(required=False),
    responses=answers(*MODEL_POST_ANSWERS, 401, 403, 550),
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
    """A new version with only the given fields changed; a new zip_file replaces the zip, model_available=false
    removes it. Tasks already submitted keep their version."""
    return await _new_version(
        request, hid, update.changes(), update.model_available, sessions, settings, storage, caller
    )


@router.delete("/{hid}", responses=answers(401, 403, 409, 550))
def delete_model(
    hid: str,
    session: SessionDep,
    storage: StorageDep,
    caller: AdminDep,
    force: Annotated[bool, Query(description="cancel the model's pending and running tasks")] = False,
) -> dict[str, Any]:
    """Delete a model, its versions and zips: 409 while tasks are pending or running, unless force=true cancels
    them. Its tasks answer 550 from now on."""
    return delete(session, storage, hid, force=force, caller=caller)
