"""The relay: exactly SPEC's public calls, each with and without a trailing slash, nothing else.

`add_routes` puts them on the app itself rather than on an included router, so a poll (the most frequent call) is
matched in one pass over the app's routes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import Response

from common.openapi import (
    MODEL_POST_ANSWERS,
    TASK_ANSWERS,
    TASK_POLL_ANSWERS,
    TASK_POST_ANSWERS,
    answers,
    zip_form,
)
from common.schemas import HID_PATTERN, AuditPage, ModelIn, ModelOut, ModelPut, TaskOut, TaskPage, TaskQuery
from common.settings import valid_uid
from public_api.deps import RelayDep
from public_api.errors import RelayError

__all__ = ["add_routes"]

Endpoint = Callable[..., Awaitable[Response]]
_HID_RE = re.compile(HID_PATTERN)
_KEY_ID_RE = re.compile(r"^k[0-9a-f]{16}$")
# Every relayed call can meet these: API keys, and a private API that is down, slow or broken.
_RELAY_ANSWERS = (401, 502, 503, 504)
_UID_OK = {
    "description": "the task uid, as a JSON string",
    "content": {"application/json": {"schema": {"type": "string"}}},
}
_ZIP_OK = {"description": "the output zip (streamed)", "content": {"application/zip": {}}}
_LOGS_OK = {"description": "the model container's stdout and stderr", "content": {"text/plain": {}}}
_DELETED_OK = {
    "description": "cancelled and deleted",
    "content": {"application/json": {"example": {"detail": "deleted"}}},
}


def _both(app: FastAPI, method: str, path: str, endpoint: Endpoint, codes: tuple[int, ...], **kwargs: Any) -> None:
    """Register a route at path and at path + '/', answering the same (no redirect), documenting these answers."""
    responses = answers(*_RELAY_ANSWERS, *codes, ok=kwargs.pop("ok", None))
    app.add_api_route(path + "/", endpoint, methods=[method], responses=responses, **kwargs)
    app.add_api_route(path, endpoint, methods=[method], include_in_schema=False, **kwargs)


def _model_path(hid: str) -> str:
    """The private API path of a model; an id that cannot be one is simply not found."""
    if not _HID_RE.fullmatch(hid):
        raise RelayError(550, f"no model with human_readable_id {hid!r}")
    return f"/api/models/{hid}"


def _key_path(key_id: str, suffix: str = "") -> str:
    """The private API path of an API key; an id that cannot be one is simply not found."""
    if not _KEY_ID_RE.fullmatch(key_id):
        raise RelayError(404, f"no API key {key_id!r}")
    return f"/api/keys/{key_id}{suffix}"


def _task_path(uid: str, suffix: str = "") -> str:
    """The private API path of a task; a uid that is not one of ours is simply not found."""
    if not valid_uid(uid):
        raise RelayError(554, "task not found")
    return f"/api/tasks/{uid}{suffix}"


# The query models below are checked here, so a bad field is answered without a trip to the private API; the
# query itself is relayed as the caller sent it.


async def post_model(relay: RelayDep, fields: Annotated[ModelIn, Query()]) -> Response:
    """Register a model: only when ALLOW_PUBLIC_POST_MODEL is on, and (the private API checks) with an admin key."""
    if not relay.settings.allow_public_post_model:
        raise RelayError(403, "posting models through the public API is off (ALLOW_PUBLIC_POST_MODEL)")
    return await relay.send("POST", "/api/models/", with_body=True)


async def list_models(relay: RelayDep) -> Response:
    """The list of models."""
    return await relay.send("GET", "/api/models/")


async def get_model(hid: str, relay: RelayDep) -> Response:
    """One model, with its versions."""
    return await relay.send("GET", _model_path(hid))


def _model_changes_allowed(relay: RelayDep) -> None:
    """Models change through the public API only where they may be posted through it."""
    if not relay.settings.allow_public_post_model:
        raise RelayError(403, "changing models through the public API is off (ALLOW_PUBLIC_POST_MODEL)")


async def put_model(hid: str, relay: RelayDep, fields: Annotated[ModelPut, Query()]) -> Response:
    """A new version of a model (admin): the same fields as posting it, and optionally a new zip."""
    _model_changes_allowed(relay)
    return await relay.send("PUT", _model_path(hid), with_body=True)


async def delete_model(
    hid: str, relay: RelayDep, force: Annotated[bool, Query(description="cancel its pending and running tasks")] = False
) -> Response:
    """Delete a model (admin): 409 while tasks wait for it, unless ?force=true cancels them."""
    _model_changes_allowed(relay)
    return await relay.send("DELETE", _model_path(hid))


async def list_tasks(relay: RelayDep) -> Response:
    """The caller's own tasks, newest first (admins: ?all=true for everyone's)."""
    return await relay.send("GET", "/api/tasks/")


async def post_key(relay: RelayDep) -> Response:
    """Make an API key (admin); the answer holds its secret, once."""
    return await relay.send("POST", "/api/keys/", with_body=True)


async def list_keys(relay: RelayDep) -> Response:
    """The API keys, without their secrets (admin)."""
    return await relay.send("GET", "/api/keys/")


async def revoke_key(key_id: str, relay: RelayDep) -> Response:
    """Revoke an API key (admin): it answers 401 from now on."""
    return await relay.send("DELETE", _key_path(key_id))


async def rotate_key(key_id: str, relay: RelayDep) -> Response:
    """A new secret for the same key (admin): its tasks stay its own."""
    return await relay.send("POST", _key_path(key_id, "/rotate"))


async def list_audit(relay: RelayDep) -> Response:
    """Who created, changed, deleted or cancelled what, newest first (admin)."""
    return await relay.send("GET", "/api/audit/")


async def post_task(relay: RelayDep, model: Annotated[TaskQuery, Query()]) -> Response:
    """Post an input zip for a model; the answer is the task uid as a JSON string."""
    return await relay.send("POST", "/api/tasks/", with_body=True)


async def get_task(uid: str, relay: RelayDep) -> Response:
    """The output zip (streamed), or 551/552/553/554/550 as SPEC says."""
    return await relay.send("GET", _task_path(uid))


async def delete_task(uid: str, relay: RelayDep) -> Response:
    """Cancel a task (a running container is stopped) and delete its data."""
    return await relay.send("DELETE", _task_path(uid))


async def task_status(
    uid: str,
    relay: RelayDep,
    wait: Annotated[
        float | None,
        Query(gt=0, le=60, description="answer when status, phase or progress changes, or after this many seconds"),
    ] = None,
) -> Response:
    """Status, phase, progress, model, timestamps, queue position, attempt, exit code, error; `wait`: a long poll."""
    return await relay.send("GET", _task_path(uid, "/status"), waiting=wait is not None)


async def task_logs(uid: str, relay: RelayDep) -> Response:
    """The model container's stdout/stderr (bounded)."""
    return await relay.send("GET", _task_path(uid, "/logs"))


def add_routes(app: FastAPI) -> None:
    """Register the relayed calls on the app."""
    _both(
        app,
        "POST",
        "/api/models",
        post_model,
        MODEL_POST_ANSWERS,
        response_model=ModelOut,
        openapi_extra=zip_form(required=False),
        summary="Post a model (when enabled)",
    )
    _both(app, "GET", "/api/models", list_models, (), response_model=list[ModelOut], summary="List models")
    _both(app, "GET", "/api/models/{hid}", get_model, (550,), response_model=ModelOut, summary="One model")
    _both(
        app,
        "PUT",
        "/api/models/{hid}",
        put_model,
        (*MODEL_POST_ANSWERS, 550),
        response_model=ModelOut,
        openapi_extra=zip_form(required=False),
        summary="A new version of a model (admin)",
    )
    _both(app, "DELETE", "/api/models/{hid}", delete_model, (403, 409, 550), summary="Delete a model (admin)")
    _both(app, "GET", "/api/tasks", list_tasks, (422,), response_model=TaskPage, summary="The caller's tasks")
    _both(app, "POST", "/api/keys", post_key, (403, 422), summary="Make an API key (admin)")
    _both(app, "GET", "/api/keys", list_keys, (403,), summary="List API keys (admin)")
    _both(app, "DELETE", "/api/keys/{key_id}", revoke_key, (403, 404), summary="Revoke an API key (admin)")
    _both(app, "POST", "/api/keys/{key_id}/rotate", rotate_key, (403, 404), summary="A new secret for a key")
    _both(app, "GET", "/api/audit", list_audit, (403, 422), response_model=AuditPage, summary="The audit trail (admin)")
    _both(
        app,
        "POST",
        "/api/tasks",
        post_task,
        TASK_POST_ANSWERS,
        ok=_UID_OK,
        openapi_extra=zip_form(required=True),
        summary="Post a task; answers its uid",
    )
    _both(
        app,
        "GET",
        "/api/tasks/{uid}",
        get_task,
        TASK_POLL_ANSWERS,
        ok=_ZIP_OK,
        summary="Poll a task; 200 is its output zip",
    )
    _both(
        app,
        "DELETE",
        "/api/tasks/{uid}",
        delete_task,
        TASK_ANSWERS,
        ok=_DELETED_OK,
        summary="Cancel a task and delete its data",
    )
    _both(
        app,
        "GET",
        "/api/tasks/{uid}/status",
        task_status,
        TASK_ANSWERS,
        response_model=TaskOut,
        summary="A task's status",
    )
    _both(app, "GET", "/api/tasks/{uid}/logs", task_logs, TASK_ANSWERS, ok=_LOGS_OK, summary="A task's container logs")
