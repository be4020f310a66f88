"""The relay: exactly SPEC's public calls, each with and without a trailing slash, nothing else."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.convertors import Convertor
from starlette.routing import compile_path

from common.settings import valid_uid
from public_api.deps import RelayDep
from public_api.errors import RelayError

__all__ = ["RELAYED", "RelayedRoute", "router"]

router = APIRouter()

Endpoint = Callable[..., Awaitable[Response]]
# (method, path regex, path parameter convertors, endpoint) of every relayed call, slash variants included: what the
# fast path (public_api/fast_path.py) serves without FastAPI's routing and dependency resolution.
RelayedRoute = tuple[str, re.Pattern[str], dict[str, Convertor[Any]], Endpoint]
RELAYED: list[RelayedRoute] = []


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    """An OpenAPI query parameter (documented here, checked by the private API)."""
    return {"name": name, "in": "query", "schema": {"type": kind}, "description": description}


def _zip_body(required: bool) -> dict[str, Any]:
    """An OpenAPI multipart body with one `zip_file` (streamed, so FastAPI must not parse it)."""
    schema = {
        "type": "object",
        "properties": {"zip_file": {"type": "string", "format": "binary"}},
        **({"required": ["zip_file"]} if required else {}),
    }
    return {"required": required, "content": {"multipart/form-data": {"schema": schema}}}


_MODEL_DOC = {
    "parameters": [
        _query("container_tag", "string", "the docker image to run"),
        _query("human_readable_id", "string", "unique id: letters, digits, ._-"),
        _query("description", "string", "free text"),
        _query("model_available", "boolean", "true when a zip_file is sent"),
        _query("use_gpu", "boolean", "default true"),
        _query("timeout", "integer", "seconds a task may run"),
        _query("mem_limit", "string", "docker size string, e.g. 4g"),
        _query("shm_size", "string", "docker size string, e.g. 2g"),
        _query("cpus", "number", "CPUs a task may use"),
        _query("network", "boolean", "give the container a network (default false)"),
    ],
    "requestBody": _zip_body(required=False),
}
_TASK_DOC = {
    "parameters": [
        _query("human_readable_id", "string", "the model to run"),
        _query("model_human_readable_id", "string", "alias of human_readable_id"),
    ],
    "requestBody": _zip_body(required=True),
}


def _both(method: str, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
    """Register a route at path and at path + '/', answering the same (no redirect); its endpoint takes `relay`."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(path + "/", endpoint, methods=[method], **kwargs)
        router.add_api_route(path, endpoint, methods=[method], include_in_schema=False, **kwargs)
        for variant in (path + "/", path):
            regex, _, convertors = compile_path(variant)
            RELAYED.append((method, regex, convertors, endpoint))
        return endpoint

    return register


def _task_path(uid: str, suffix: str = "") -> str:
    """The private API path of a task; a uid that is not one of ours is simply not found."""
    if not valid_uid(uid):
        raise RelayError(554, "task not found")
    return f"/api/tasks/{uid}{suffix}"


@_both("POST", "/api/models", openapi_extra=_MODEL_DOC, summary="Post a model (when enabled)")
async def post_model(relay: RelayDep) -> Response:
    """Register a model: only when ALLOW_PUBLIC_POST_MODEL is on, and with an admin key when keys are on."""
    if not relay.settings.allow_public_post_model:
        raise RelayError(403, "posting models through the public API is off (ALLOW_PUBLIC_POST_MODEL)")
    if not relay.caller.admin:
        raise RelayError(403, "posting models needs an admin API key")
    return await relay.send("POST", "/api/models/", owned=False, with_body=True)


@_both("GET", "/api/models", summary="List models")
async def list_models(relay: RelayDep) -> Response:
    """The list of models."""
    return await relay.send("GET", "/api/models/", owned=False)


@_both("POST", "/api/tasks", openapi_extra=_TASK_DOC, summary="Post a task; answers its uid")
async def post_task(relay: RelayDep) -> Response:
    """Post an input zip for a model; the answer is the task uid as a JSON string."""
    return await relay.send("POST", "/api/tasks/", owned=True, with_body=True)


@_both("GET", "/api/tasks/{uid}", summary="Poll a task; 200 is its output zip")
async def get_task(uid: str, relay: RelayDep) -> Response:
    """The output zip (streamed), or 551/552/553/554/550 as SPEC says."""
    return await relay.send("GET", _task_path(uid), owned=True)


@_both("DELETE", "/api/tasks/{uid}", summary="Cancel a task and delete its data")
async def delete_task(uid: str, relay: RelayDep) -> Response:
    """Cancel a task (a running container is stopped) and delete its data."""
    return await relay.send("DELETE", _task_path(uid), owned=True)


@_both("GET", "/api/tasks/{uid}/status", summary="A task's status")
async def task_status(uid: str, relay: RelayDep) -> Response:
    """Status, model, timestamps, queue position, attempt, exit code, error."""
    return await relay.send("GET", _task_path(uid, "/status"), owned=True)


@_both("GET", "/api/tasks/{uid}/logs", summary="A task's container logs")
async def task_logs(uid: str, relay: RelayDep) -> Response:
    """The model container's stdout/stderr (bounded)."""
    return await relay.send("GET", _task_path(uid, "/logs"), owned=True)
