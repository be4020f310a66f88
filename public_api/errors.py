"""The public API's own errors and the one place they become HTTP answers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = ["RelayError", "error_response", "install_handlers"]

log = logging.getLogger(__name__)


class RelayError(Exception):
    """An answer the relay gives itself (auth, forbidden call, private API down); `detail` is for users."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}


def error_response(exc: RelayError) -> JSONResponse:
    """A RelayError as a flat JSON body."""
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _relay_error(_request: Request, exc: Exception) -> JSONResponse:
    """A RelayError raised in a FastAPI route, answered."""
    assert isinstance(exc, RelayError)
    return error_response(exc)


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that turn the relay's errors into HTTP answers."""
    app.add_exception_handler(RelayError, _relay_error)
