"""Calls the job consumers make: claim, heartbeat, fetch input and model zip, upload output and logs, finish."""

from __future__ import annotations

import zipfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from common.settings import valid_uid
from private_api import crud
from private_api.deps import InternalAuth, SessionDep, SettingsDep, StorageDep
from private_api.errors import BadUpload, Conflict, ModelNotFound, TaskNotFound, UnknownTask
from private_api.orm import Task
from private_api.routes.tasks import ZipFileResponse
from private_api.schemas import ClaimIn, ClaimOut, FinishIn, ModelOut, ReleaseIn
from private_api.storage import land, receive_body

router = APIRouter(prefix="/internal", tags=["consumers"], dependencies=[InternalAuth])

MAX_OUTPUT_BYTES = 1024**4


def _uid(uid: str) -> str:
    if not valid_uid(uid):
        raise UnknownTask(f"no task {uid!r}")
    return uid


def _task(session: Session, uid: str) -> Task:
    try:
        return crud.get_task(session, uid=_uid(uid))
    except TaskNotFound as exc:
        raise UnknownTask(exc.detail) from exc


@router.post("/tasks/{uid}/claim", response_model=ClaimOut)
def claim(uid: str, body: ClaimIn, session: SessionDep, settings: SettingsDep) -> ClaimOut:
    """Hand the task to this consumer with the next attempt number (409 says why not)."""
    task, model = crud.claim_task(
        session,
        uid=_uid(uid),
        consumer_id=body.consumer_id,
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
    )
    return ClaimOut(task=crud.task_out(task), model=ModelOut.model_validate(model))


@router.post("/tasks/{uid}/heartbeat")
def heartbeat(uid: str, body: ClaimIn, session: SessionDep) -> dict[str, str]:
    """Renew the lease; status `cancelled` tells the consumer to stop the container."""
    status = crud.heartbeat(session, uid=_uid(uid), consumer_id=body.consumer_id)
    session.commit()
    return {"status": status}


@router.get("/tasks/{uid}/input", response_class=ZipFileResponse)
def get_input(uid: str, session: SessionDep, storage: StorageDep) -> FileResponse:
    """The task's input zip."""
    task = _task(session, uid)
    path = storage.input_path(task.uid)
    if not path.exists():
        raise UnknownTask(f"the input of task {uid!r} is gone")
    return ZipFileResponse(path, media_type="application/zip", filename=f"{uid}-input.zip")


@router.get("/models/{hid}/zip", response_class=ZipFileResponse)
def get_model_zip(hid: str, session: SessionDep, storage: StorageDep) -> FileResponse:
    """The model's zip, for /model."""
    model = crud.get_model(session, hid=hid)
    if model.zip_sha256 is None:
        raise ModelNotFound(f"model {hid!r} has no zip")
    path = storage.model_zip_path(model.id, model.zip_sha256)
    response = ZipFileResponse(path, media_type="application/zip", filename=f"{hid}.zip")
    response.headers["X-Zip-Sha256"] = model.zip_sha256
    return response


def _require_running(session: Session, uid: str) -> None:
    task = _task(session, uid)
    if task.status != "running":
        raise Conflict(f"task is {task.status}", status=task.status)


def _check_output(path: Path) -> None:
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadUpload(f"the output is not a valid zip: {exc}") from exc


@router.put("/tasks/{uid}/output")
async def put_output(uid: str, request: Request, session: SessionDep, storage: StorageDep) -> dict[str, int]:
    """Store the output zip of a running task (raw application/zip body, streamed)."""
    await run_in_threadpool(_require_running, session, _uid(uid))
    received = await receive_body(request, storage.temp_path(), MAX_OUTPUT_BYTES)
    try:
        await run_in_threadpool(_check_output, received.path)
        await run_in_threadpool(_require_running, session, uid)
        land(received.path, storage.output_path(uid))
    finally:
        received.path.unlink(missing_ok=True)
    return {"size": received.size}


@router.put("/tasks/{uid}/logs")
async def put_logs(
    uid: str, request: Request, session: SessionDep, storage: StorageDep, settings: SettingsDep
) -> dict[str, int]:
    """Store the container's log; only its last MAX_LOG_BYTES are kept."""
    await run_in_threadpool(_task, session, uid)
    limit = settings.max_log_bytes
    tail = bytearray()
    async for chunk in request.stream():
        tail += chunk
        if len(tail) > 2 * limit:
            del tail[: len(tail) - limit]
    kept = bytes(tail[-limit:])
    temp = storage.temp_path()
    await run_in_threadpool(temp.write_bytes, kept)
    land(temp, storage.log_path(uid))
    return {"size": len(kept)}


@router.post("/tasks/{uid}/finish")
def finish(uid: str, body: FinishIn, session: SessionDep, storage: StorageDep) -> dict[str, str]:
    """Store the task's final state; the consumer acknowledges its message after this answers 200."""
    output = storage.output_path(_uid(uid))
    size = output.stat().st_size if output.exists() else None
    crud.finish_task(
        session,
        uid=uid,
        consumer_id=body.consumer_id,
        status=body.status,
        reason=body.reason,
        exit_code=body.exit_code,
        output_size=size,
    )
    session.commit()
    return {"status": body.status}


@router.post("/tasks/{uid}/release")
def release(uid: str, body: ReleaseIn, session: SessionDep) -> dict[str, str]:
    """Put a running task back to pending (its consumer is shutting down and requeues the message)."""
    crud.release_task(session, uid=_uid(uid), consumer_id=body.consumer_id, reason=body.reason)
    session.commit()
    return {"status": "pending"}
