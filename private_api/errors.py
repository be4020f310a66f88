"""Domain errors of the private API and the one place that turns them into HTTP answers."""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

# SPEC's task status codes.
MODEL_NOT_FOUND = 550
TASK_PENDING = 551
TASK_FAILED = 552
NO_OUTPUT = 553
TASK_NOT_FOUND = 554


class ApiError(Exception):
    """An answer other than success: a status code, a message and optional extra fields."""

    status_code = 500

    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ModelNotFound(ApiError):
    """No model with that human_readable_id (or the task's model was deleted)."""

    status_code = MODEL_NOT_FOUND


class ModelExists(ApiError):
    """The human_readable_id is taken."""

    status_code = 409


class TaskNotFound(ApiError):
    """No such task, or it was deleted."""

    status_code = TASK_NOT_FOUND


class UnknownTask(ApiError):
    """A consumer asked about a task that does not exist (consumer calls answer 404, not SPEC's 554)."""

    status_code = 404


class UnknownConsumer(ApiError):
    """No consumer instance with that id has sent a heartbeat."""

    status_code = 404


class TaskPending(ApiError):
    """The task has no result yet."""

    status_code = TASK_PENDING


class TaskFailed(ApiError):
    """The task failed; extra fields say why."""

    status_code = TASK_FAILED


class NoOutput(ApiError):
    """The task finished but its output zip is missing."""

    status_code = NO_OUTPUT


class OutputExpired(NoOutput):
    """The task finished, but its output zip is past OUTPUT_RETENTION_SECONDS and was (or is being) removed."""


class Forbidden(ApiError):
    """The caller's key may not make this call (e.g. an admin call with a user key)."""

    status_code = 403


class BadUpload(ApiError):
    """The uploaded file is not an acceptable zip."""

    status_code = 400


class CallbackRefused(ApiError):
    """A callback_url this server does not call (scheme, credentials, host not in WEBHOOK_ALLOWED_HOSTS)."""

    status_code = 400


class UploadTooLarge(ApiError):
    """The upload is over the configured maximum size."""

    status_code = 413


class UploadTimeout(ApiError):
    """The client sent nothing for UPLOAD_IDLE_TIMEOUT_SECONDS; the upload was dropped."""

    status_code = 408


class DiskFull(ApiError):
    """The server's disk is too full to store the upload; nothing was kept."""

    status_code = 507
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "300"}


class QueueFull(ApiError):
    """Too many tasks wait already; the client should come back later."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "30"}


class QuotaExceeded(ApiError):
    """The caller's key has its max_queued_tasks pending already; it should come back when some have started."""

    status_code = 429
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "30"}


class IdempotencyKeyReused(ApiError):
    """An Idempotency-Key the caller already used for another model."""

    status_code = 409


class InvalidRequest(ApiError):
    """Query fields that do not make sense together."""

    status_code = 422


class Conflict(ApiError):
    """The task is not in a state that allows this call (consumer calls)."""

    status_code = 409


class ModelInUse(ApiError):
    """The model has pending or running tasks (DELETE without ?force=true)."""

    status_code = 409


class Unauthorized(ApiError):
    """Missing or wrong internal token."""

    status_code = 401


class KeyRefused(ApiError):
    """An API key is missing, unknown, expired or revoked (the relay passes this 401 on; it knows it by its header)."""

    status_code = 401
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class KeyNotFound(ApiError):
    """No API key with that id."""

    status_code = 404


def as_response(exc: ApiError) -> JSONResponse:
    """The answer for an ApiError: flat JSON {"detail": ..., **extra}."""
    return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status_code, headers=exc.headers)


def install_handlers(app: FastAPI) -> None:
    """Answer every ApiError raised in a route with as_response."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return as_response(exc)

    app.add_exception_handler(ApiError, handle)
