"""The public API's own errors and the one place they become HTTP answers."""

from __future__ import annotations

import logging

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from public_api.config import Settings

__all__ = ["RelayError", "error_response", "install_handlers", "transport_error"]

log = logging.getLogger(__name__)

_RETRY_AFTER = "10"


class RelayError(Exception):
    """An answer the relay gives itself (auth, forbidden call, private API down); `detail` is for users."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}


def transport_error(exc: httpx.HTTPError, settings: Settings, with_body: bool) -> RelayError:
    """A transport failure towards the private API as the answer the caller gets."""
    if isinstance(exc, httpx.PoolTimeout):
        what = "uploads" if with_body else "open requests"
        return RelayError(
            503,
            f"the public API is at its limit of {what} to the private API; try again shortly",
            {"Retry-After": _RETRY_AFTER},
        )
    if isinstance(exc, httpx.ConnectTimeout):
        return RelayError(
            504,
            f"the private API did not accept a connection within {settings.private_api_connect_timeout:g}s",
        )
    if isinstance(exc, httpx.ConnectError):
        return RelayError(
            503,
            "the private API is not reachable (starting or down); try again shortly",
            {"Retry-After": _RETRY_AFTER},
        )
    if isinstance(exc, httpx.TimeoutException):
        return RelayError(504, f"the private API did not answer within {settings.private_api_timeout:g}s")
    return RelayError(502, "the private API broke off the request; try again")


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
