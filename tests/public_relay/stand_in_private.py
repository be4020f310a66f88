"""A small real private API for the relay's fast tests: the public calls of docs/architecture.md, in memory."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

TOKEN = "stand-in-internal-token-0123456789"
# Answers the private API gives to an upload before (or instead of) storing it, by model: status, detail, headers.
EARLY_ANSWERS: dict[str, tuple[int, str, dict[str, str]]] = {
    "idle": (408, "the upload sent nothing for 300s and was dropped", {}),
    "nodisk": (507, "the server's disk is too full to store the upload", {"Retry-After": "300"}),
    "busy": (409, "the task is not in a state that allows this", {}),
}


@dataclass
class StandIn:
    """What the stand-in has seen and stores; tests read and tweak it."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    seen_paths: list[str] = field(default_factory=list)
    # The (host, port) each request came from: one port per connection the relay opened.
    seen_peers: list[tuple[str, int]] = field(default_factory=list)
    delay: float = 0.0
    output_size: int = 1024


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    """A flat error body, as the private API answers."""
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _pattern(size: int) -> AsyncIterator[bytes]:
    """`size` bytes of a known pattern, in 1 MiB chunks."""

    async def chunks() -> AsyncIterator[bytes]:
        block = bytes(range(256)) * 4096
        left = size
        while left > 0:
            yield block[: min(left, len(block))]
            left -= len(block)

    return chunks()


def create_stand_in(state: StandIn) -> FastAPI:
    """The stand-in app over `state`."""
    app = FastAPI(redirect_slashes=False)

    @app.middleware("http")
    async def check_token(request: Request, call_next: Any) -> Response:
        state.seen_headers.append({k.lower(): v for k, v in request.headers.items()})
        state.seen_paths.append(request.url.path + ("?" + request.url.query if request.url.query else ""))
        if request.client is not None:
            state.seen_peers.append((request.client.host, request.client.port))
        if state.delay:
            await asyncio.sleep(state.delay)
        if request.url.path != "/healthz" and request.headers.get("x-internal-token") != TOKEN:
            return _error(401, "bad internal token")
        response: Response = await call_next(request)
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def body_digest(request: Request) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    @app.post("/api/models/")
    async def post_model(request: Request) -> Response:
        hid = request.query_params.get("human_readable_id", "")
        if not hid:
            return JSONResponse({"detail": [{"loc": ["query", "human_readable_id"], "msg": "required"}]}, 422)
        if hid in state.models:
            return _error(409, f"model {hid!r} exists")
        size, sha = await body_digest(request)
        if hid == "nested":
            return JSONResponse({"detail": {"detail": "nested message", "reason": "x"}}, status_code=422)
        state.models[hid] = {"human_readable_id": hid, "zip_size": size, "zip_sha256": sha}
        return JSONResponse(state.models[hid])

    @app.get("/api/models/")
    async def list_models() -> list[dict[str, Any]]:
        return list(state.models.values())

    @app.get("/api/models/{hid}")
    async def get_model(hid: str) -> Response:
        return JSONResponse(state.models[hid]) if hid in state.models else _error(550, "model not found")

    @app.post("/api/tasks/")
    async def post_task(request: Request) -> Response:
        hid = request.query_params.get("human_readable_id") or request.query_params.get("model_human_readable_id")
        declared = request.headers.get("content-length", "")
        if hid == "tiny" and declared.isdigit() and int(declared) > 1024:
            # Refused by its declared size, before a byte of it is read (as the private API does).
            return _error(413, "upload is larger than the maximum of 1024 bytes")
        if hid in EARLY_ANSWERS:
            status, detail, headers = EARLY_ANSWERS[hid]
            return JSONResponse({"detail": detail}, status_code=status, headers=headers)
        size, sha = await body_digest(request)
        if hid not in state.models:
            return _error(550, f"no model {hid!r}")
        if hid == "full":
            return JSONResponse({"detail": "the queue is full"}, status_code=503, headers={"Retry-After": "30"})
        uid = secrets.token_urlsafe(16)
        state.tasks[uid] = {
            "uid": uid,
            "model": hid,
            "status": "pending",
            "owner": request.headers.get("x-owner"),
            "input_size": size,
            "input_sha256": sha,
        }
        return JSONResponse(uid)

    def find(request: Request, uid: str) -> dict[str, Any] | None:
        task = state.tasks.get(uid)
        owner = request.headers.get("x-owner")
        if task is None or (owner is not None and task["owner"] != owner):
            return None
        return task

    @app.get("/api/tasks/{uid}")
    async def get_task(uid: str, request: Request) -> Response:
        task = find(request, uid)
        if task is None:
            return _error(554, "task not found")
        if task["status"] in ("pending", "running"):
            return _error(551, f"task is {task['status']}")
        if task["status"] == "failed":
            return _error(552, "task failed", reason="exit 1", exit_code=1, log_tail="boom")
        return StreamingResponse(
            _pattern(state.output_size),
            media_type="application/zip",
            headers={"Content-Length": str(state.output_size)},
        )

    @app.get("/api/tasks/{uid}/status")
    async def status(uid: str, request: Request) -> Response:
        task = find(request, uid)
        return JSONResponse(task) if task else _error(554, "task not found")

    @app.get("/api/tasks/{uid}/logs")
    async def logs(uid: str, request: Request) -> Response:
        task = find(request, uid)
        return PlainTextResponse("line 1\nline 2\n") if task else _error(554, "task not found")

    @app.delete("/api/tasks/{uid}")
    async def delete(uid: str, request: Request) -> Response:
        if find(request, uid) is None:
            return _error(554, "task not found")
        del state.tasks[uid]
        return JSONResponse({"detail": "deleted"})

    @app.get("/internal/tasks/{uid}/input")
    async def internal_input(uid: str) -> Response:
        return Response(b"internal", media_type="application/zip")

    return app
