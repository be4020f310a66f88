"""Task routes as users see them after submitting (routes/submit.py): list, poll, status (and wait), logs, cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, PlainTextResponse
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from common.openapi import TASK_ANSWERS, TASK_POLL_ANSWERS, answers
from common.schemas import FINAL_STATES, MAX_OFFSET, MAX_PAGE, TaskOut, TaskPage, TaskStatus
from private_api import audit, crud, crud_consumers, metrics, model_zips
from private_api.auth import Authenticated, Caller, CallerDep
from private_api.deps import (
    EngineDep,
    InternalAuth,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StorageDep,
    TaskUid,
    WatcherDep,
)
from private_api.errors import (
    Forbidden,
    ModelNotFound,
    NoOutput,
    OutputExpired,
    TaskFailed,
    TaskNotFound,
    TaskPending,
)
from private_api.retention import Retention, expired_at, retention_of
from private_api.storage import Storage
from private_api.watching import Fingerprint, fingerprint

# The longest `wait` of a status call.
MAX_WAIT_SECONDS = 60.0

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[InternalAuth, Authenticated])

LOG_TAIL_BYTES = 4000


class ZipFileResponse(FileResponse):
    """A streamed file answer read in large chunks."""

    chunk_size = 1024 * 1024


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
