"""Task routes as users see them: submit, poll, status, logs, list, cancel."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from common.openapi import TASK_ANSWERS, TASK_POLL_ANSWERS, TASK_POST_ANSWERS, answers, zip_form
from common.schemas import FINAL_STATES, HID_PATTERN, MAX_OFFSET, MAX_PAGE, TaskOut, TaskPage, TaskStatus
from common.webhooks import MAX_URL_LENGTH, url_problem
from private_api import audit, crud, crud_consumers, crud_models, idempotency, metrics, model_zips
from private_api.auth import Authenticated, Caller, CallerDep
from private_api.config import Settings
from private_api.deps import (
    EngineDep,
    InternalAuth,
    PublisherDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StorageDep,
    TaskUid,
    WatcherDep,
)
from private_api.errors import (
    CallbackRefused,
    Forbidden,
    InvalidRequest,
    ModelNotFound,
    NoOutput,
    OutputExpired,
    QueueFull,
    QuotaExceeded,
    TaskFailed,
    TaskNotFound,
    TaskPending,
)
from private_api.orm import utcnow
from private_api.retention import Retention, expired_at, retention_of
from private_api.routes.uploads import disk_errors, receive_zip
from private_api.storage import Received, Storage, land
from private_api.watching import Fingerprint, fingerprint

# The longest `wait` of a status call.
MAX_WAIT_SECONDS = 60.0

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[InternalAuth, Authenticated])

LOG_TAIL_BYTES = 4000


class ZipFileResponse(FileResponse):
    """A streamed file answer read in large chunks."""

    chunk_size = 1024 * 1024


def _admit(
    sessions: sessionmaker[Session], settings: Settings, hid: str, caller: Caller, key: str | None
) -> str | None:
    """Before the body is read (a short session: none is held while it streams): the uid an Idempotency-Key made
    already, else ModelNotFound, QuotaExceeded (the caller's key) or QueueFull (everyone's), else None."""
    with sessions() as session:
        if key is not None:
            idempotency.purge(session)
            uid = idempotency.replay(session, owner=caller.owner, key=key, hid=hid)
            if uid is not None:
                return uid
        crud_models.get_model(session, hid=hid)
        if caller.owner is not None:  # an open service has no keys, so no quota either
            limit = caller.max_queued_tasks if caller.max_queued_tasks is not None else settings.key_max_queued_tasks
            if crud.count_pending(session, owner=caller.owner) >= limit:
                raise QuotaExceeded(
                    f"your key has {limit} tasks waiting already, its max_queued_tasks; "
                    "try again when some have started"
                )
        if crud.count_pending(session) >= settings.max_queued_tasks:
            raise QueueFull(f"{settings.max_queued_tasks} tasks are waiting already; try again later")
    return None


def _store(
    sessions: sessionmaker[Session],
    storage: Storage,
    uid: str,
    hid: str,
    caller: Caller,
    zip_in: Received,
    key: str | None,
    callback_url: str | None = None,
) -> str:
    """Land the input zip and commit the task row (the file is in place before the row says so); the uid answered:
    another one when a concurrent request with the same Idempotency-Key stored its task first."""
    final = storage.input_path(uid)
    with disk_errors(), sessions() as session:
        model = crud_models.get_model(session, hid=hid)
        land(zip_in.path, final)
        try:
            if key is not None:
                idempotency.remember(session, owner=caller.owner, key=key, uid=uid, hid=hid)
            task = crud.create_task(
                session, uid=uid, model=model, owner=caller.owner, input_size=zip_in.size, input_sha256=zip_in.sha256
            )
            if callback_url:  # due from the moment the task has ended (crud_webhooks)
                task.callback_url, task.webhook_state, task.webhook_next_at = callback_url, "pending", utcnow()
            audit.record(session, caller, "task.create", uid, model=hid, model_version=task.model_version)
            session.commit()
        except IntegrityError:
            session.rollback()
            final.unlink(missing_ok=True)
            winner = idempotency.replay(session, owner=caller.owner, key=key, hid=hid) if key is not None else None
            if winner is None:
                raise
            return winner
        except BaseException:
            session.rollback()
            final.unlink(missing_ok=True)
            raise
    return uid


def _new_uid() -> str:
    """A fresh task uid (32 URL-safe characters), never starting with `-` (a command line takes that for an option)."""
    while True:
        uid = secrets.token_urlsafe(24)
        if uid[0].isalnum():
            return uid


@router.post("", response_model=str, openapi_extra=zip_form(required=True), responses=answers(*TASK_POST_ANSWERS, 401))
async def create_task(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
    publisher: PublisherDep,
    caller: CallerDep,
    human_readable_id: Annotated[str | None, Query(pattern=HID_PATTERN)] = None,
    model_human_readable_id: Annotated[str | None, Query(pattern=HID_PATTERN)] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            pattern=idempotency.KEY_PATTERN,
            description="the same key (per owner, 24 h) answers the same task uid instead of making a second task",
        ),
    ] = None,
    callback_url: Annotated[
        str | None, Query(max_length=MAX_URL_LENGTH, description="POSTed the final status (allowed hosts only)")
    ] = None,
) -> str:
    """Submit a zip of input for a model; answers the new task's uid once it is stored and queued."""
    if human_readable_id and model_human_readable_id and human_readable_id != model_human_readable_id:
        raise InvalidRequest("human_readable_id and model_human_readable_id name different models")
    hid = human_readable_id or model_human_readable_id
    if not hid:
        raise InvalidRequest("give the model as the query parameter human_readable_id (or model_human_readable_id)")
    if callback_url and (problem := url_problem(callback_url, settings.webhook_hosts)):
        raise CallbackRefused(problem)
    replayed = await run_in_threadpool(_admit, sessions, settings, hid, caller, idempotency_key)
    if replayed is not None:
        return replayed  # the body is not read: this key made its task already
    zip_in = await receive_zip(request, storage=storage, settings=settings)
    if zip_in is None:
        raise InvalidRequest("send the input zip as the multipart file field zip_file")
    uid = _new_uid()
    try:
        uid = await run_in_threadpool(
            _store, sessions, storage, uid, hid, caller, zip_in, idempotency_key, callback_url or None
        )
    finally:
        zip_in.path.unlink(missing_ok=True)
    metrics.count_submission(hid)
    publisher.wake()
    return uid


@router.get("", response_model=TaskPage, responses=answers(401, 422))
def list_tasks(
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    status: TaskStatus | None = None,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    all_tasks: Annotated[bool, Query(alias="all", description="everyone's tasks (admin keys only)")] = False,
) -> TaskPage:
    """The caller's own tasks, newest first, filtered by status and model; an admin's `all=true` lists everyone's
    (tasks made while the service was open, without an owner, only then)."""
    if all_tasks and not caller.admin:
        raise Forbidden("listing everyone's tasks (all=true) needs an admin key")
    owner = None if all_tasks else caller.owner
    tasks, total = crud.list_tasks(session, status=status, model=model, owner=owner, limit=limit, offset=offset)
    items = crud_consumers.tasks_out(
        session, tasks, stale_seconds=settings.consumer_stale_seconds, retention=retention_of(settings)
    )
    return TaskPage(items=items, total=total)


def _log_tail(storage: Storage, uid: str) -> str:
    path = storage.log_path(uid)
    if not path.exists():
        return ""
    with open(path, "rb") as log:
        log.seek(max(path.stat().st_size - LOG_TAIL_BYTES, 0))
        return log.read().decode(errors="replace")


def _poll(engine: Engine, storage: Storage, uid: str, caller: Caller, retention: Retention) -> Path:
    """The output zip of a finished task, or the domain error that answers the poll (one query, no session kept)."""
    with engine.connect() as connection:
        row = crud.poll(connection, uid=uid)
    if row is None or row.deleted or not caller.sees(row.owner):
        raise TaskNotFound(f"no task {uid!r}")
    if row.status == "finished":
        expired = expired_at(
            status=row.status, finished_at=row.finished_at, output_expired_at=row.output_expired_at, retention=retention
        )
        if expired is not None:
            raise OutputExpired(
                f"the task's output expired on {expired.isoformat(timespec='seconds')}: outputs are kept "
                f"{retention.output_seconds:g} s after the task ends (OUTPUT_RETENTION_SECONDS)",
                expired_at=expired.isoformat(),
            )
        output = storage.output_path(uid)
        if not output.exists():
            raise NoOutput("the task finished, but its output zip is missing")
        return output
    if row.model_exists is None:
        raise ModelNotFound(f"the task's model {row.model_hid!r} no longer exists")
    if row.status in ("pending", "running"):
        raise TaskPending(f"task is {row.status}", status=row.status)
    raise TaskFailed(
        row.error or "the task failed", reason=row.error, exit_code=row.exit_code, log_tail=_log_tail(storage, uid)
    )


@router.get(
    "/{uid}",
    response_class=ZipFileResponse,
    responses=answers(
        *TASK_POLL_ANSWERS, 401, ok={"content": {"application/zip": {}}, "description": "the output zip"}
    ),
)
async def get_task_output(
    uid: TaskUid, engine: EngineDep, storage: StorageDep, settings: SettingsDep, caller: CallerDep
) -> ZipFileResponse:
    """Poll a task; when it is finished, the answer is its output zip (streamed, no database connection held)."""
    output = await run_in_threadpool(_poll, engine, storage, uid, caller, retention_of(settings))
    metrics.count_sent("output", output)
    return ZipFileResponse(output, media_type="application/zip", filename=f"{uid}.zip")


def _status(
    sessions: sessionmaker[Session], stale_seconds: float, retention: Retention, uid: str, caller: Caller
) -> tuple[TaskOut, Fingerprint]:
    """The status JSON of a task the caller may see, and what a waiter compares (one short session)."""
    with sessions() as session:
        task = crud.get_task(session, uid=uid, caller=caller)
        status = crud_consumers.task_status(session, task, stale_seconds=stale_seconds, retention=retention)
        return status, fingerprint(task)


@router.get("/{uid}/status", response_model=TaskOut, responses=answers(*TASK_ANSWERS, 401, 422))
async def get_task_status(
    uid: TaskUid,
    sessions: SessionsDep,
    settings: SettingsDep,
    watcher: WatcherDep,
    caller: CallerDep,
    wait: Annotated[
        float | None,
        Query(gt=0, le=MAX_WAIT_SECONDS, description="answer when status, phase or progress changes, or after this"),
    ] = None,
) -> TaskOut:
    """A task's status, phase, progress, timestamps, queue position, attempt, exit code and error.

    With `wait=S` (0 < S <= 60) the answer comes as soon as the status, phase or progress changes, or after S
    seconds unchanged; a task that has ended answers at once. No database connection is held while it waits.
    """
    stale = settings.consumer_stale_seconds
    status, seen = await run_in_threadpool(_status, sessions, stale, retention_of(settings), uid, caller)
    if wait is None or status.status in FINAL_STATES:
        return status
    await watcher.wait(uid, seen, wait)
    status, _ = await run_in_threadpool(_status, sessions, stale, retention_of(settings), uid, caller)
    return status


@router.get("/{uid}/logs", response_class=PlainTextResponse, responses=answers(*TASK_ANSWERS, 401))
def get_task_logs(uid: TaskUid, session: SessionDep, storage: StorageDep, caller: CallerDep) -> PlainTextResponse:
    """What the model container wrote to stdout and stderr (the last MAX_LOG_BYTES of it)."""
    crud.get_task(session, uid=uid, caller=caller)
    path = storage.log_path(uid)
    text = path.read_bytes().decode(errors="replace") if path.exists() else ""
    return PlainTextResponse(text)


@router.delete("/{uid}", responses=answers(*TASK_ANSWERS, 401))
def delete_task(uid: TaskUid, session: SessionDep, storage: StorageDep, caller: CallerDep) -> dict[str, str]:
    """Cancel a task (a running container is stopped) and delete its data."""
    task = crud.get_task(session, uid=uid, caller=caller)
    crud.cancel_task(session, task)
    audit.record(session, caller, "task.cancel", uid, status=task.status)
    session.commit()
    storage.remove_task_files(uid)
    model_zips.after_task_end(session, storage, task)
    return {"detail": "deleted"}
