"""How the public calls are documented in OpenAPI, shared by both APIs: the streamed zip body and every answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from common.schemas import ErrorOut, TaskFailedOut

__all__ = [
    "ANSWERS",
    "MODEL_POST_ANSWERS",
    "TASK_ANSWERS",
    "TASK_POLL_ANSWERS",
    "TASK_POST_ANSWERS",
    "answers",
    "zip_form",
]

# Every answer other than 200 a public call can give, with what it means (SPEC's codes and the common 4xx/5xx).
ANSWERS: dict[int, tuple[str, type[BaseModel]]] = {
    400: ("not a valid zip, or an unsafe one (the message names the entry)", ErrorOut),
    401: ("an API key is required, or the one given is not valid", ErrorOut),
    403: ("the call is not allowed (e.g. public model posting is off)", ErrorOut),
    404: ("no such API key", ErrorOut),
    408: ("the upload sent nothing for UPLOAD_IDLE_TIMEOUT_SECONDS and was dropped", ErrorOut),
    409: ("conflict: the id is taken, or the task is not in a state that allows this", ErrorOut),
    413: ("the upload is larger than the server accepts", ErrorOut),
    422: ("invalid or missing fields; the message lists them", ErrorOut),
    429: ("too many requests; see Retry-After", ErrorOut),
    500: ("internal error", ErrorOut),
    502: ("the public API could not talk to the private API", ErrorOut),
    503: ("the queue is full, or the private API is unreachable; see Retry-After", ErrorOut),
    504: ("the private API did not answer in time", ErrorOut),
    507: ("the server's disk is too full to store the upload; see Retry-After", ErrorOut),
    550: ("the model does not exist (or the task's model no longer does)", ErrorOut),
    551: ("the task is pending or running", ErrorOut),
    552: ("the task failed: reason, exit_code, log_tail", TaskFailedOut),
    553: ("the task finished, but there is no output zip (or it expired)", ErrorOut),
    554: ("no such task, or it was deleted", ErrorOut),
}

_UPLOAD = (400, 408, 413, 422, 507)
MODEL_POST_ANSWERS = (*_UPLOAD, 403, 409)
TASK_POST_ANSWERS = (*_UPLOAD, 429, 503, 550)
TASK_POLL_ANSWERS = (500, 550, 551, 552, 553, 554)
TASK_ANSWERS = (554,)


def answers(*codes: int, ok: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: these codes from ANSWERS, and `ok` as its 200 when given."""
    documented: dict[int | str, dict[str, Any]] = {}
    if ok is not None:
        documented[200] = ok
    for code in sorted(set(codes)):
        description, model = ANSWERS[code]
        documented[code] = {"description": description, "model": model}
    return documented


def zip_form(*, required: bool) -> dict[str, Any]:
    """The `openapi_extra` of an upload: a multipart body with one `zip_file`, streamed (never parsed by FastAPI)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"zip_file": {"type": "string", "format": "binary"}},
    }
    if required:
        schema["required"] = ["zip_file"]
    return {"requestBody": {"required": required, "content": {"multipart/form-data": {"schema": schema}}}}
