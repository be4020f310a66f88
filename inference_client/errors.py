"""One exception per answer a caller must tell apart, each with the CLI exit code it maps to."""

from __future__ import annotations

from typing import Any

__all__ = [
    "EXIT_CODES",
    "AuthError",
    "BadRequestError",
    "ConflictError",
    "ConnectionFailedError",
    "ForbiddenError",
    "InferenceServerError",
    "InsufficientStorageError",
    "InternalServerError",
    "ModelNotFoundError",
    "NotOfferedError",
    "ServerBusyError",
    "TaskFailedError",
    "TaskNotFinishedError",
    "TaskNotFoundError",
    "TaskOutputMissingError",
    "TaskWaitTimeoutError",
    "ValidationError",
    "error_from_response",
]


class InferenceServerError(Exception):
    """Base of every error the SDK raises; `status_code` is the HTTP status (None when no answer came)."""

    exit_code = 1

    def __init__(self, message: str, *, status_code: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view for `--json` output."""
        return {"error": type(self).__name__, "status_code": self.status_code, "detail": self.message}


class ConnectionFailedError(InferenceServerError):
    """The server could not be reached, the TLS handshake failed, or the connection broke."""

    exit_code = 3


class AuthError(InferenceServerError):
    """401: the API key is missing or wrong."""

    exit_code = 4


class ForbiddenError(InferenceServerError):
    """403: the server refuses the call (e.g. public model posting is off)."""

    exit_code = 4


class ModelNotFoundError(InferenceServerError):
    """550: the model does not exist (or the task's model was deleted)."""

    exit_code = 5


class TaskNotFoundError(InferenceServerError):
    """554: the task does not exist or was deleted."""

    exit_code = 5


class ConflictError(InferenceServerError):
    """409: e.g. the human_readable_id is taken."""

    exit_code = 6


class BadRequestError(InferenceServerError):
    """4xx: the request or its file was refused (not a zip, unsafe, too large)."""

    exit_code = 7


class ValidationError(BadRequestError):
    """422: some fields are invalid; the message lists them."""


class NotOfferedError(BadRequestError):
    """404/405 on a route: this server does not offer the call (e.g. it exists only on the private API)."""


class TaskFailedError(InferenceServerError):
    """552: the model ran and failed; carries the reason, the exit code and the tail of its log."""

    exit_code = 8

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = 552,
        body: Any = None,
        reason: str | None = None,
        model_exit_code: int | None = None,
        log_tail: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body)
        self.reason = reason
        self.model_exit_code = model_exit_code
        self.log_tail = log_tail

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view including the failure details."""
        data = super().to_dict()
        data.update(reason=self.reason, exit_code=self.model_exit_code, log_tail=self.log_tail)
        return data


class TaskNotFinishedError(InferenceServerError):
    """551: the task is still pending or running."""

    exit_code = 9


class TaskWaitTimeoutError(TaskNotFinishedError):
    """Waiting for a task gave up before it reached a final state."""


class TaskOutputMissingError(InferenceServerError):
    """553: the task finished but its output zip is missing."""

    exit_code = 10


class ServerBusyError(InferenceServerError):
    """429/503: the queue is full or the server is overloaded; `retry_after` is in seconds when given."""

    exit_code = 11

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body)
        self.retry_after = retry_after


class InsufficientStorageError(ServerBusyError):
    """507: the server's disk is too full to store the upload; nothing was kept, try again later."""


class InternalServerError(InferenceServerError):
    """5xx other than the task codes: the server failed."""

    exit_code = 12


EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    ConnectionFailedError.__name__: ConnectionFailedError.exit_code,
    AuthError.__name__: AuthError.exit_code,
    ModelNotFoundError.__name__: ModelNotFoundError.exit_code,
    ConflictError.__name__: ConflictError.exit_code,
    BadRequestError.__name__: BadRequestError.exit_code,
    TaskFailedError.__name__: TaskFailedError.exit_code,
    TaskNotFinishedError.__name__: TaskNotFinishedError.exit_code,
    TaskOutputMissingError.__name__: TaskOutputMissingError.exit_code,
    ServerBusyError.__name__: ServerBusyError.exit_code,
    InternalServerError.__name__: InternalServerError.exit_code,
    "cancelled": 13,
    "interrupted": 130,
}


def _detail_text(detail: Any) -> str:
    """Turn FastAPI's `detail` (a string, or a list of field errors) into one readable line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p not in ("query", "body"))
                msg = item.get("msg", "invalid")
                parts.append(f"{loc}: {msg}" if loc else str(msg))
            else:
                parts.append(str(item))
        return "; ".join(parts) if parts else "invalid request"
    return str(detail)


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (only the delta-seconds form; dates are rare here)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(
    status_code: int, body: Any, text: str, headers: dict[str, str] | None = None
) -> InferenceServerError:
    """The exception for an error answer: the body is the decoded JSON (or None), text the raw text."""
    detail_raw = body.get("detail") if isinstance(body, dict) else None
    detail = _detail_text(detail_raw) if detail_raw is not None else (text.strip()[:500] or f"HTTP {status_code}")
    headers = headers or {}
    if status_code == 552:
        data = body if isinstance(body, dict) else {}
        return TaskFailedError(
            f"task failed: {data.get('reason') or detail}",
            body=body,
            reason=data.get("reason") or detail,
            model_exit_code=data.get("exit_code"),
            log_tail=data.get("log_tail"),
        )
    simple: dict[int, type[InferenceServerError]] = {
        401: AuthError,
        403: ForbiddenError,
        409: ConflictError,
        422: ValidationError,
        550: ModelNotFoundError,
        551: TaskNotFinishedError,
        553: TaskOutputMissingError,
        554: TaskNotFoundError,
    }
    if status_code in simple:
        return simple[status_code](detail, status_code=status_code, body=body)
    if status_code in (429, 503, 507):
        retry_after = _parse_retry_after(headers.get("retry-after"))
        busy, what = (
            (InsufficientStorageError, "server disk full") if status_code == 507 else (ServerBusyError, "server busy")
        )
        return busy(f"{what}: {detail}", status_code=status_code, body=body, retry_after=retry_after)
    if status_code == 405 or (status_code == 404 and detail == "Not Found"):
        return NotOfferedError(
            f"this server does not offer the call ({detail}); it may exist only on the private API",
            status_code=status_code,
            body=body,
        )
    if 400 <= status_code < 500:
        return BadRequestError(detail, status_code=status_code, body=body)
    return InternalServerError(f"server error {status_code}: {detail}", status_code=status_code, body=body)
