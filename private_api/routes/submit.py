"""Submitting a task: `POST /api/tasks/` (quota and idempotency checks before the body is read, then the upload)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from common.openapi import TASK_POST_ANSWERS, answers, zip_form
from common.schemas import HID_PATTERN
from common.webhooks import MAX_URL_LENGTH, url_problem
from private_api import audit, crud, crud_models, idempotency, metrics
from private_api.auth import Authenticated, Caller, CallerDep
from private_api.config import Settings
from private_api.deps import InternalAuth, PublisherDep, SessionsDep, SettingsDep, StorageDep
from private_api.errors import CallbackRefused, InvalidRequest, QueueFull, QuotaExceeded
from private_api.orm import utcnow
from private_api.routes.uploads import disk_errors, receive_zip
from private_api.storage import Received, Storage, land

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[InternalAuth, Authenticated])


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
