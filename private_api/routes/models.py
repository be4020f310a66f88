"""Model routes: register, list, show, update, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from private_api import crud
from private_api.deps import InternalAuth, SessionDep, SettingsDep, StorageDep
from private_api.errors import InvalidRequest, ModelExists
from private_api.routes.uploads import ZIP_FORM, receive_zip
from private_api.schemas import HID_PATTERN, ModelLimits, ModelOut, check_container_tag
from private_api.storage import Received, Storage, land

router = APIRouter(prefix="/api/models", tags=["models"], dependencies=[InternalAuth])

HidQuery = Annotated[str, Query(pattern=HID_PATTERN, description="stable id: letters, digits, ._-")]


def _limits(**given: object) -> dict[str, object]:
    """The given run limits, validated; InvalidRequest with the reason otherwise."""
    fields = {name: value for name, value in given.items() if value is not None}
    try:
        return ModelLimits(**fields).model_dump(include=set(fields))  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(problems) from exc


def _tag(value: str) -> str:
    try:
        return check_container_tag(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc


def _store_new(
    session: Session,
    storage: Storage,
    zip_in: Received | None,
    fields: dict[str, object],
    limits: dict[str, object],
) -> ModelOut:
    model = crud.create_model(
        session,
        hid=str(fields["hid"]),
        container_tag=str(fields["container_tag"]),
        description=str(fields["description"]),
        use_gpu=bool(fields["use_gpu"]),
        limits=ModelLimits(**limits),  # type: ignore[arg-type]
    )
    final = None
    try:
        if zip_in is not None:
            final = storage.model_zip_path(model.id, zip_in.sha256)
            land(zip_in.path, final)
            crud.update_model(session, model, zip_sha256=zip_in.sha256, zip_size=zip_in.size)
        session.commit()
    except BaseException:
        session.rollback()
        if final is not None:
            final.unlink(missing_ok=True)
        raise
    return ModelOut.model_validate(model)


@router.post("", response_model=ModelOut, openapi_extra=ZIP_FORM)
async def create_model(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    container_tag: Annotated[str, Query(min_length=1, max_length=512)],
    human_readable_id: HidQuery,
    description: Annotated[str, Query(max_length=10_000)] = "",
    model_available: bool | None = None,
    use_gpu: bool = True,
    timeout: int | None = None,
    mem_limit: str | None = None,
    shm_size: str | None = None,
    cpus: float | None = None,
    network: bool | None = None,
) -> ModelOut:
    """Register a model: a docker image, its run limits and an optional model zip mounted at /model."""
    limits = _limits(timeout=timeout, mem_limit=mem_limit, shm_size=shm_size, cpus=cpus, network=network)
    _tag(container_tag)
    if await run_in_threadpool(crud.find_model, session, hid=human_readable_id) is not None:
        raise ModelExists(f"a model with human_readable_id {human_readable_id!r} exists already")
    zip_in = await receive_zip(
        request, storage=storage, max_bytes=settings.max_upload_bytes, limits=settings.zip_limits
    )
    try:
        if model_available and zip_in is None:
            raise InvalidRequest("model_available=true needs a zip_file")
        fields: dict[str, object] = {
            "hid": human_readable_id,
            "container_tag": container_tag,
            "description": description,
            "use_gpu": use_gpu,
        }
        return await run_in_threadpool(_store_new, session, storage, zip_in, fields, limits)
    finally:
        if zip_in is not None:
            zip_in.path.unlink(missing_ok=True)


@router.get("", response_model=list[ModelOut])
def list_models(session: SessionDep) -> list[ModelOut]:
    """All registered models."""
    return [ModelOut.model_validate(m) for m in crud.list_models(session)]


@router.get("/{hid}", response_model=ModelOut)
def get_model(hid: str, session: SessionDep) -> ModelOut:
    """One model by its human_readable_id."""
    return ModelOut.model_validate(crud.get_model(session, hid=hid))


def _store_update(
    session: Session,
    storage: Storage,
    hid: str,
    zip_in: Received | None,
    drop_zip: bool,
    fields: dict[str, object],
) -> ModelOut:
    model = crud.get_model(session, hid=hid)
    old = storage.model_zip_path(model.id, model.zip_sha256) if model.zip_sha256 else None
    final = None
    try:
        if zip_in is not None:
            final = storage.model_zip_path(model.id, zip_in.sha256)
            land(zip_in.path, final)
            fields.update(zip_sha256=zip_in.sha256, zip_size=zip_in.size)
        elif drop_zip:
            fields.update(zip_sha256=None, zip_size=None)
        crud.update_model(session, model, **fields)
        session.commit()
    except BaseException:
        session.rollback()
        if final is not None and final != old:
            final.unlink(missing_ok=True)
        raise
    if old is not None and old != final and (zip_in is not None or drop_zip):
        old.unlink(missing_ok=True)
    return ModelOut.model_validate(model)


@router.patch("/{hid}", response_model=ModelOut, openapi_extra=ZIP_FORM)
async def update_model(
    hid: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    container_tag: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    description: Annotated[str | None, Query(max_length=10_000)] = None,
    model_available: bool | None = None,
    use_gpu: bool | None = None,
    timeout: int | None = None,
    mem_limit: str | None = None,
    shm_size: str | None = None,
    cpus: float | None = None,
    network: bool | None = None,
) -> ModelOut:
    """Change a model's fields; a new zip_file replaces its zip, model_available=false removes it."""
    fields = _limits(timeout=timeout, mem_limit=mem_limit, shm_size=shm_size, cpus=cpus, network=network)
    if container_tag is not None:
        fields["container_tag"] = _tag(container_tag)
    if description is not None:
        fields["description"] = description
    if use_gpu is not None:
        fields["use_gpu"] = use_gpu
    await run_in_threadpool(crud.get_model, session, hid=hid)
    zip_in = await receive_zip(
        request, storage=storage, max_bytes=settings.max_upload_bytes, limits=settings.zip_limits
    )
    try:
        if model_available and zip_in is None:
            current = await run_in_threadpool(crud.get_model, session, hid=hid)
            if not current.model_available:
                raise InvalidRequest("model_available=true needs a zip_file")
        drop_zip = model_available is False and zip_in is None
        return await run_in_threadpool(_store_update, session, storage, hid, zip_in, drop_zip, fields)
    finally:
        if zip_in is not None:
            zip_in.path.unlink(missing_ok=True)


@router.delete("/{hid}")
def delete_model(hid: str, session: SessionDep, storage: StorageDep) -> dict[str, str]:
    """Delete a model and its zip; its tasks answer 550 from now on."""
    model = crud.get_model(session, hid=hid)
    zip_path = storage.model_zip_path(model.id, model.zip_sha256) if model.zip_sha256 else None
    crud.delete_model(session, model)
    session.commit()
    if zip_path is not None:
        zip_path.unlink(missing_ok=True)
    return {"detail": f"model {hid!r} deleted"}
