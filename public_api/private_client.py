"""All the public API says to the private API goes through here: pooled httpx clients, streamed both ways."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from public_api.config import Settings
from public_api.errors import RelayError, transport_error

__all__ = ["KEEPALIVE_EXPIRY", "Upstream", "open_upstream", "probe", "relay"]

log = logging.getLogger(__name__)

# Seconds an idle connection to the private API is reused: below the private API's keep-alive timeout (75 s, see
# private_api/__main__.py), so the private API never closes a connection just as a request goes out on it. An idle
# connection the private API did close is noticed (its socket reads EOF) and replaced before it is used.
KEEPALIVE_EXPIRY = 60.0
# Request headers a client may pass on; everything else (X-Internal-Token, X-Owner, Authorization, cookies...) is
# dropped: the private API gets the hash of the caller's key instead.
_FORWARD_REQUEST = ("accept", "user-agent", "x-request-id", "idempotency-key")
# Passed on only with the body they describe: a GET or DELETE that declares one is relayed without it.
_FORWARD_BODY = ("content-type", "content-length")
# Hop-by-hop headers, and those the public API's own server sets again.
_DROP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "server",
        "date",
    }
)
# An error body up to this size is read and checked to be flat; larger ones (never expected) stream unchanged.
_MAX_ERROR_BODY = 256 * 1024
_CLOSE = {"Connection": "close"}
# Characters a query string may carry as they are (RFC 3986 query, plus "%" so existing escapes stay as sent).
_QUERY_SAFE = "!$&'()*+,;=:@/?%-._~"


@dataclass(frozen=True)
class Upstream:
    """The private API as the relay reaches it: one pool for uploads, one for long polls, one for every other call."""

    calls: httpx.AsyncClient
    uploads: httpx.AsyncClient
    # `status?wait=S` calls hold a connection for up to a minute: a pool of their own, so they never starve polls.
    waits: httpx.AsyncClient | None = None

    def pool(self, with_body: bool, waiting: bool = False) -> httpx.AsyncClient:
        """The pool a call goes through."""
        if waiting and self.waits is not None:
            return self.waits
        return self.uploads if with_body else self.calls


@asynccontextmanager
async def open_upstream(settings: Settings) -> AsyncIterator[Upstream]:
    """Both pools, open for the app's lifespan."""
    # httpx logs every request at INFO; uvicorn's access log already says what was asked.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    async with (
        _client(settings, settings.private_api_max_connections) as calls,
        _client(settings, settings.private_api_max_uploads) as uploads,
        _client(settings, settings.private_api_max_waits) as waits,
    ):
        yield Upstream(calls=calls, uploads=uploads, waits=waits)


def _client(settings: Settings, max_connections: int) -> httpx.AsyncClient:
    """A pooled client of at most `max_connections` connections to the private API."""
    timeout = httpx.Timeout(
        connect=settings.private_api_connect_timeout,
        read=settings.private_api_timeout,
        write=settings.private_api_timeout,
        pool=settings.private_api_pool_timeout,
    )
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=min(50, max_connections),
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    return httpx.AsyncClient(
        base_url=settings.private_api_url,
        timeout=timeout,
        limits=limits,
        # identity: the relay passes bodies on as they are, so it must not ask for a compression the caller did not.
        headers={"X-Internal-Token": settings.internal_token, "Accept-Encoding": "identity"},
        follow_redirects=False,
        trust_env=False,
    )


def _request_headers(request: Request, key_sha256: str | None, with_body: bool) -> dict[str, str]:
    """The headers sent on to the private API: a safe subset of the client's, the mark of a public call, the key."""
    names = _FORWARD_REQUEST + _FORWARD_BODY if with_body else _FORWARD_REQUEST
    headers = {name: request.headers[name] for name in names if name in request.headers}
    if request.client is not None:
        headers["X-Forwarded-For"] = request.client.host
    # The private API checks the key of every public call (and is open only while no key exists at all).
    headers["X-Public-Call"] = "1"
    if key_sha256 is not None:
        headers["X-Api-Key-Sha256"] = key_sha256
    return headers


def _target(path: str, query: bytes) -> str:
    """The request target: our own path plus the caller's query, anything unsafe in it percent-encoded."""
    if not query:
        return path
    return f"{path}?{quote(query, safe=_QUERY_SAFE)}"


def _response_headers(upstream: httpx.Response) -> dict[str, str]:
    """The private API's response headers without hop-by-hop ones."""
    return {name: value for name, value in upstream.headers.items() if name.lower() not in _DROP_RESPONSE}


def _flatten(body: object) -> object:
    """An error body with any `detail` nested in a `detail` lifted to the top level."""
    if not isinstance(body, dict):
        return {"detail": body}
    while isinstance(body.get("detail"), dict):
        inner = body.pop("detail")
        body = {**body, **inner}
    return body


async def _error_response(upstream: httpx.Response, extra: dict[str, str]) -> Response:
    """A small JSON error from the private API, passed on with its status and a flat body."""
    try:
        raw = await upstream.aread()
    finally:
        await upstream.aclose()
    headers = {**_response_headers(upstream), **extra}
    headers.pop("content-length", None)
    headers.pop("content-encoding", None)
    try:
        body = json.loads(raw)
    except ValueError:
        return Response(raw, status_code=upstream.status_code, headers=headers)
    return JSONResponse(_flatten(body), status_code=upstream.status_code, headers=headers)


async def _stream(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The private API's body as httpx reads it (up to 64 KiB a piece), closing the upstream however it ends."""
    # Passed on in the pieces httpx reads: gathering larger ones only adds copies.
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        # Headers are already sent: the client sees a short body (Content-Length tells it so); log why.
        log.warning("private API broke off a download of %s: %s", upstream.request.url.path, exc)
    finally:
        await upstream.aclose()


class UploadIdle(Exception):
    """The caller sent nothing for UPLOAD_IDLE_TIMEOUT_SECONDS in the middle of an upload."""


class _Upload:
    """The caller's body as it arrives (UploadIdle when it stalls), and whether it arrived whole."""

    def __init__(self, request: Request, idle_seconds: float) -> None:
        self.request = request
        self.idle_seconds = idle_seconds
        self.complete = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces; a stall ends the upload, so it holds a pooled connection for a bounded time."""
        chunks = self.request.stream().__aiter__()
        while True:
            try:
                async with asyncio.timeout(self.idle_seconds):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                self.complete = True
                return
            except TimeoutError as exc:
                raise UploadIdle from exc
            yield chunk


async def relay(
    request: Request,
    *,
    upstream: Upstream,
    settings: Settings,
    method: str,
    path: str,
    key_sha256: str | None,
    with_body: bool = False,
    waiting: bool = False,
) -> Response:
    """Send one public call on to the private API and stream its answer back, status code unchanged."""
    client = upstream.pool(with_body, waiting)
    upload = _Upload(request, settings.upload_idle_timeout_seconds) if with_body else None
    upstream_request = client.build_request(
        method,
        _target(path, request.scope.get("query_string", b"")),
        headers=_request_headers(request, key_sha256, with_body),
        # Streamed as it arrives: with the caller's Content-Length as is, without one chunked.
        content=upload.chunks() if upload is not None else None,
    )
    try:
        answer = await client.send(upstream_request, stream=True)
    except httpx.HTTPError as exc:
        log.warning("%s %s: private API failed: %s: %s", method, path, type(exc).__name__, exc)
        raise transport_error(exc, settings, with_body) from exc
    except ClientDisconnect as exc:
        log.info("%s %s: the client went away during the upload", method, path)
        raise RelayError(400, "the upload was interrupted") from exc
    except UploadIdle as exc:
        log.info(
            "%s %s: the client sent nothing for %gs; upload dropped", method, path, settings.upload_idle_timeout_seconds
        )
        raise RelayError(
            408,
            f"the upload sent nothing for {settings.upload_idle_timeout_seconds:g}s and was dropped",
            _CLOSE,
        ) from exc
    # A refused API key comes with a Bearer challenge and is the caller's to see; a 401 without one is the private
    # API refusing this relay's internal token.
    if answer.status_code == 401 and "www-authenticate" not in answer.headers:
        await answer.aclose()
        log.error("the private API refused the internal token: INTERNAL_TOKEN differs between the services")
        raise RelayError(502, "the public API is misconfigured (the private API refused it)")
    # An answer before the whole upload arrived (413, 507...) closes the caller's connection: the rest of its body
    # would only be read to be thrown away.
    extra = _CLOSE if upload is not None and not upload.complete else {}
    length = int(answer.headers.get("content-length") or _MAX_ERROR_BODY + 1)
    is_json = answer.headers.get("content-type", "").startswith("application/json")
    if answer.status_code >= 400 and is_json and length <= _MAX_ERROR_BODY:
        return await _error_response(answer, extra)
    return StreamingResponse(
        _stream(answer),
        status_code=answer.status_code,
        headers={**_response_headers(answer), **extra},
        background=BackgroundTask(answer.aclose),
    )


async def probe(upstream: Upstream) -> str:
    """'ok' when the private API answers its health check, else a short reason."""
    try:
        response = await upstream.calls.get("/healthz", timeout=3.0)
    except httpx.HTTPError as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok" if response.status_code == 200 else f"unhealthy: HTTP {response.status_code}"
