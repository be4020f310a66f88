"""Task routes as users see them: submit, poll, status, logs, list, cancel."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from common.settings import valid_uid
from private_api import crud
from private_api.deps import (
    InternalAuth,
    OwnerDep,
    PublisherDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    check_internal_token,
)
from private_api.errors import (
    ApiError,
    InvalidRequest,
    ModelNotFound,
    NoOutput,
    QueueFull,
    TaskFailed,
    TaskNotFound,
    TaskPending,
    as_response,
)
from private_api.orm import Task
from private_api.routes.uploads import ZIP_FORM, receive_zip
from private_api.schemas import HID_PATTERN, TaskOut, TaskPage, TaskStatus
from private_api.storage import Received, Storage, land

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[InternalAuth])
# Polling is the hottest call, so it skips dependency injection (a third of its cost): see get_task_output.
poll_router = APIRouter(prefix="/api/tasks", tags=["tasks"])

LOG_TAIL_BYTES = 4000


class ZipFileResponse(FileResponse):
    """A streamed file answer read in large chunks."""

    chunk_size = 1024 * 1024


def _store(session: Session, storage: Storage, uid: str, model_hid: str, owner: str | None, zip_in: Received) -> None:
    model = crud.get_model(session, hid=model_hid)
    final = storage.input_path(uid)
    land(zip_in.path, final)
    try:
        crud.create_task(session, uid=uid, model=model, owner=owner, input_size=zip_in.size, input_sha256=zip_in.sha256)
        session.commit()
    except BaseException:
        session.rollback()
        final.unlink(missing_ok=True)
        raise


@router.post("", response_model=str, openapi_extra=ZIP_FORM)
async def create_task(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    publisher: PublisherDep,
    owner: OwnerDep,
    human_readable_id: Annotated[str | None, Query(pattern=HID_PATTERN)] = None,
    model_human_readable_id: Annotated[str | None, Query(pattern=HID_PATTERN)] = None,
) -> str:
    """Submit a zip of input for a model; answers the new task's uid once it is stored and queued."""
    if human_readable_id and model_human_readable_id and human_readable_id != model_human_readable_id:
        raise InvalidRequest("human_readable_id and model_human_readable_id name different models")
    hid = human_readable_id or model_human_readable_id
    if not hid:
        raise InvalidRequest("give the model as the query parameter human_readable_id (or model_human_readable_id)")
    await run_in_threadpool(crud.get_model, session, hid=hid)
    if await run_in_threadpool(crud.count_pending, session) >= settings.max_queued_tasks:
        raise QueueFull(f"{settings.max_queued_tasks} tasks are waiting already; try again later")
    zip_in = await receive_zip(
        request, storage=storage, max_bytes=settings.max_upload_bytes, limits=settings.zip_limits
    )
    if zip_in is None:
        raise InvalidRequest("send the input zip as the multipart file field zip_file")
    uid = secrets.token_urlsafe(24)
    try:
        await run_in_threadpool(_store, session, storage, uid, hid, owner, zip_in)
    finally:
        zip_in.path.unlink(missing_ok=True)
    publisher.wake()
    return uid


@router.get("", response_model=TaskPage)
def list_tasks(
    session: SessionDep,
    owner: OwnerDep,
    status: TaskStatus | None = None,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> TaskPage:
    """Tasks, newest first, filtered by status and model."""
    tasks, total = crud.list_tasks(session, status=status, model=model, owner=owner, limit=limit, offset=offset)
    return TaskPage(items=[crud.task_out(t) for t in tasks], total=total)


def _task(session: Session, uid: str, owner: str | None) -> Task:
    if not valid_uid(uid):
        raise TaskNotFound(f"no task {uid!r}")
    return crud.get_task(session, uid=uid, owner=owner)


def _log_tail(storage: Storage, uid: str) -> str:
    path = storage.log_path(uid)
    if not path.exists():
        return ""
    with open(path, "rb") as log:
        log.seek(max(path.stat().st_size - LOG_TAIL_BYTES, 0))
        return log.read().decode(errors="replace")


def _poll(engine: Engine, storage: Storage, uid: str, owner: str | None) -> Path | ApiError:
    """The output zip of a finished task, or the error that answers the poll (one database round trip)."""
    if not valid_uid(uid):
        return TaskNotFound(f"no task {uid!r}")
    with engine.connect() as connection:
        row = crud.poll(connection, uid=uid)
    if row is None or row.deleted or (owner is not None and row.owner != owner):
        return TaskNotFound(f"no task {uid!r}")
    if row.status == "finished":
        output = storage.output_path(uid)
        return output if output.exists() else NoOutput("the task finished, but its output zip is missing")
    if row.model_exists is None:
        return ModelNotFound(f"the task's model {row.model_hid!r} no longer exists")
    if row.status in ("pending", "running"):
        return TaskPending(f"task is {row.status}", status=row.status)
    return TaskFailed(
        row.error or "the task failed",
        reason=row.error,
        exit_code=row.exit_code,
        log_tail=_log_tail(storage, uid),
    )


@poll_router.get(
    "/{uid}",
    response_class=ZipFileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the output zip"},
        550: {"description": "the task's model no longer exists"},
        551: {"description": "pending or running"},
        552: {"description": "failed: reason, exit_code, log_tail"},
        553: {"description": "finished, but there is no output zip"},
        554: {"description": "no such task, or deleted"},
    },
)
async def get_task_output(uid: str, request: Request) -> Response:
    """Poll a task; when it is finished, the answer is its output zip (streamed)."""
    # The hottest call: no dependency injection, one thread hop, one query, no exception machinery.
    check_internal_token(request, request.headers.get("x-internal-token"))
    state = request.app.state
    owner = request.headers.get("x-owner") or None
    found = await run_in_threadpool(_poll, state.engine, state.storage, uid, owner)
    if isinstance(found, ApiError):
        return as_response(found)
    return ZipFileResponse(found, media_type="application/zip", filename=f"{uid}.zip")


@router.get("/{uid}/status", response_model=TaskOut)
def get_task_status(uid: str, session: SessionDep, owner: OwnerDep) -> TaskOut:
    """A task's status, timestamps, queue position, attempt, exit code and error."""
    task = _task(session, uid, owner)
    return crud.task_out(task, position=crud.queue_position(session, task))


@router.get("/{uid}/logs", response_class=PlainTextResponse)
def get_task_logs(uid: str, session: SessionDep, storage: StorageDep, owner: OwnerDep) -> PlainTextResponse:
    """What the model container wrote to stdout and stderr (the last MAX_LOG_BYTES of it)."""
    _task(session, uid, owner)
    path = storage.log_path(uid)
    text = path.read_bytes().decode(errors="replace") if path.exists() else ""
    return PlainTextResponse(text)


@router.delete("/{uid}")
def delete_task(uid: str, session: SessionDep, storage: StorageDep, owner: OwnerDep) -> dict[str, str]:
    """Cancel a task (a running container is stopped) and delete its data."""
    task = _task(session, uid, owner)
    crud.cancel_task(session, task)
    session.commit()
    storage.remove_task_files(uid)
    return {"detail": "deleted"}
