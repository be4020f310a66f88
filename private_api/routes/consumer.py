"""Calls the job consumers make about a task: claim, heartbeat, input, model zip, output, logs, finish, release.

No database connection is held while a body streams in or a file streams out: the routes that stream do their
database work in short sessions before and after (a stalled consumer costs a socket, nothing shared). Every state
change is compare-and-set on status, holder instance and attempt: a stale holder gets 409 and changes nothing.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from common.schemas import size_in_bytes
from private_api import crud, crud_models, crud_tasks, leases, metrics, model_zips
from private_api.deps import (
    InternalAuth,
    InternalTaskUid,
    PublisherDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StorageDep,
)
from private_api.errors import BadUpload, ModelNotFound, TaskNotFound, UnknownTask, UploadTooLarge
from private_api.orm import Model
from private_api.receiving import receive_body, receive_tail
from private_api.routes.consumers import LeaseRuleDep
from private_api.routes.tasks import ZipFileResponse
from private_api.routes.uploads import disk_errors
from private_api.schemas import ClaimIn, ClaimOut, FinishIn, HeartbeatIn, ReleaseIn
from private_api.storage import land

router = APIRouter(prefix="/internal", tags=["consumers"], dependencies=[InternalAuth])

DEFAULT_MAX_OUTPUT = "50g"
HolderId = Annotated[str, Query(min_length=1, max_length=256, description="the holder's consumer instance id")]
Attempt = Annotated[int, Query(ge=1, description="the attempt the holder claimed")]


@router.post("/tasks/{uid}/claim", response_model=ClaimOut)
def claim(
    uid: InternalTaskUid,
    body: ClaimIn,
    session: SessionDep,
    settings: SettingsDep,
    rule: LeaseRuleDep,
    publisher: PublisherDep,
) -> ClaimOut:
    """Hand this consumer instance the next attempt of the task, or of a fairer pending task of the same queue (the
    consumer runs `task.uid` of the answer; the named task is published again); 409 says why not."""
    try:
        task, model = crud_tasks.claim_task(
            session,
            uid=uid,
            consumer_id=body.consumer_id,
            consumer_name=body.consumer_name,
            rule=rule,
            max_attempts=settings.max_attempts,
            wait_seconds=settings.key_running_wait_seconds,
        )
    finally:
        publisher.wake()  # a task the claim did not hand out is published again
    return ClaimOut(
        task=crud.task_out(task),
        model=crud_models.task_model(session, task, model),
        model_zips_needed=sorted(crud_models.needed_zips(session, model)),
    )


@router.post("/tasks/{uid}/heartbeat")
def heartbeat(uid: InternalTaskUid, body: HeartbeatIn, session: SessionDep) -> dict[str, str]:
    """Renew the lease, store phase and progress; `cancelled` tells the consumer to stop; 409 for a stale holder."""
    status = crud_tasks.heartbeat(
        session,
        uid=uid,
        consumer_id=body.consumer_id,
        attempt=body.attempt,
        phase=body.phase,
        progress=body.progress,
        progress_message=body.progress_message,
    )
    return {"status": status}


def _check_task(sessions: sessionmaker[Session], uid: str) -> None:
    with sessions() as session:
        try:
            crud.get_task(session, uid=uid)
        except TaskNotFound as exc:
            raise UnknownTask(exc.detail) from exc


@router.get("/tasks/{uid}/input", response_class=ZipFileResponse)
async def get_input(uid: InternalTaskUid, sessions: SessionsDep, storage: StorageDep) -> FileResponse:
    """The task's input zip (streamed with no database connection held)."""
    await run_in_threadpool(_check_task, sessions, uid)
    path = storage.input_path(uid)
    if not path.exists():
        raise UnknownTask(f"the input of task {uid!r} is gone")
    metrics.count_sent("input", path)
    return ZipFileResponse(path, media_type="application/zip", filename=f"{uid}-input.zip")


def _model_zip(sessions: sessionmaker[Session], hid: str, sha256: str | None) -> tuple[int, str]:
    """The model's id and the sha256 of the zip asked for (the current one without sha256); ModelNotFound if none."""
    with sessions() as session:
        model = crud_models.get_model(session, hid=hid)
        if sha256 is None:
            if model.zip_sha256 is None:
                raise ModelNotFound(f"model {hid!r} has no zip")
            return model.id, model.zip_sha256
        if not crud_models.has_zip(session, model, sha256):
            raise ModelNotFound(f"no version of model {hid!r} has the zip {sha256[:16]}")
        return model.id, sha256


ZipSha = Annotated[
    str | None, Query(pattern="^[0-9a-f]{64}$", description="the zip of the version a task runs (default: current)")
]


@router.get("/models/{hid}/zip", response_class=ZipFileResponse)
async def get_model_zip(hid: str, sessions: SessionsDep, storage: StorageDep, sha256: ZipSha = None) -> FileResponse:
    """A zip of the model, for /model: that of the version the claim named (streamed, no database connection held)."""
    model_id, found = await run_in_threadpool(_model_zip, sessions, hid, sha256)
    path = storage.model_zip_path(model_id, found)
    if not path.exists():
        raise ModelNotFound(f"the zip {found[:16]} of model {hid!r} is gone")
    metrics.count_sent("model", path)
    response = ZipFileResponse(path, media_type="application/zip", filename=f"{hid}.zip")
    response.headers["X-Zip-Sha256"] = found
    return response


def _require_holder(sessions: sessionmaker[Session], uid: str, consumer_id: str, attempt: int) -> str:
    """The model's max_output_size when this instance holds this attempt of the task; Conflict (409) if not."""
    with sessions() as session:
        task = leases.require_holder(session, uid=uid, consumer_id=consumer_id, attempt=attempt)
        model = session.get(Model, task.model_id) if task.model_id is not None else None
        return model.max_output_size if model is not None else DEFAULT_MAX_OUTPUT


def _output_bytes(max_output_size: str) -> int:
    try:
        return size_in_bytes(max_output_size)
    except ValueError:
        return size_in_bytes(DEFAULT_MAX_OUTPUT)


def _check_output(path: Path) -> None:
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadUpload(f"the output is not a valid zip: {exc}") from exc


@router.put("/tasks/{uid}/output")
async def put_output(
    uid: InternalTaskUid,
    request: Request,
    sessions: SessionsDep,
    storage: StorageDep,
    consumer_id: HolderId,
    attempt: Attempt,
) -> dict[str, int]:
    """Store the output zip of a running task (raw application/zip body, streamed; at most max_output_size).

    It is staged under this holder's name: only this holder's finish, if it wins, makes it the task's output, so a
    holder that lost the task while uploading can never replace the output of the one that took it over.
    """
    max_size = await run_in_threadpool(_require_holder, sessions, uid, consumer_id, attempt)
    try:
        received = await receive_body(request, storage.temp_path(), _output_bytes(max_size))
    except UploadTooLarge as exc:
        raise UploadTooLarge(f"the output is larger than the model's max_output_size ({max_size})") from exc
    metrics.count_received("output", received.size)
    try:
        await run_in_threadpool(_check_output, received.path)
        await run_in_threadpool(_require_holder, sessions, uid, consumer_id, attempt)
        await run_in_threadpool(land, received.path, storage.staged_output_path(uid, consumer_id, attempt))
    finally:
        received.path.unlink(missing_ok=True)
    return {"size": received.size}


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@router.put("/tasks/{uid}/logs")
async def put_logs(
    uid: InternalTaskUid,
    request: Request,
    sessions: SessionsDep,
    storage: StorageDep,
    settings: SettingsDep,
    consumer_id: HolderId,
    attempt: Attempt,
) -> dict[str, int]:
    """Store the container's log; only its last MAX_LOG_BYTES are kept."""
    await run_in_threadpool(_require_holder, sessions, uid, consumer_id, attempt)
    kept = await receive_tail(request, settings.max_log_bytes)
    await run_in_threadpool(_require_holder, sessions, uid, consumer_id, attempt)
    temp = storage.temp_path()
    try:
        with disk_errors():  # a full disk answers 507, keeping nothing
            await run_in_threadpool(_write, temp, kept)
            await run_in_threadpool(land, temp, storage.log_path(uid))
    finally:
        temp.unlink(missing_ok=True)
    return {"size": len(kept)}


@router.post("/tasks/{uid}/finish")
def finish(uid: InternalTaskUid, body: FinishIn, session: SessionDep, storage: StorageDep) -> dict[str, str]:
    """Store the task's final state and land the holder's staged output; the consumer then acknowledges its message."""
    staged = storage.staged_output_path(uid, body.consumer_id, body.attempt)
    size = staged.stat().st_size if body.status == "finished" and staged.exists() else None
    task = crud_tasks.finish_task(
        session,
        uid=uid,
        consumer_id=body.consumer_id,
        attempt=body.attempt,
        status=body.status,
        reason=body.reason,
        exit_code=body.exit_code,
        output_size=size,
        provenance=body.provenance,
    )
    if size is not None:
        land(staged, storage.output_path(uid))
    storage.remove_staged_outputs(uid)
    model_zips.after_task_end(session, storage, task)
    return {"status": body.status}


@router.post("/tasks/{uid}/release")
def release(
    uid: InternalTaskUid,
    body: ReleaseIn,
    session: SessionDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    storage: StorageDep,
) -> dict[str, str | None]:
    """Give the task back without using up its attempt; the consumer then acknowledges its message."""
    policy = leases.InfraPolicy(
        max_retries=settings.max_infra_retries,
        backoff_seconds=settings.infra_backoff_seconds,
        backoff_max_seconds=settings.infra_backoff_max_seconds,
    )
    task = crud_tasks.release_task(
        session,
        uid=uid,
        consumer_id=body.consumer_id,
        attempt=body.attempt,
        reason=body.reason,
        infrastructure=body.infrastructure,
        policy=policy,
    )
    if task.status == "failed":
        model_zips.after_task_end(session, storage, task)
    publisher.wake()
    return {"status": task.status, "not_before": task.not_before.isoformat() if task.not_before else None}
