"""All the public API says to the private API goes through here: one pooled httpx client, streamed both ways."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from public_api.config import Settings
from public_api.errors import RelayError

__all__ = ["KEEPALIVE_EXPIRY", "create_client", "probe", "relay"]

log = logging.getLogger(__name__)

# Seconds an idle connection to the private API is reused: below the private API's keep-alive timeout (75 s, see
# private_api/__main__.py), so the private API never closes a connection just as a request goes out on it. An idle
# connection the private API did close is noticed (its socket reads EOF) and replaced before it is used.
KEEPALIVE_EXPIRY = 60.0
# Request headers a client may pass on; everything else (X-Internal-Token, X-Owner, cookies...) is dropped.
_FORWARD_REQUEST = ("content-type", "content-length", "accept", "user-agent", "x-request-id")
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
_RETRY_AFTER = "10"
# Characters a query string may carry as they are (RFC 3986 query, plus "%" so existing escapes stay as sent).
_QUERY_SAFE = "!$&'()*+,;=:@/?%-._~"


def create_client(settings: Settings) -> httpx.AsyncClient:
    """The pooled client used for every relayed call; closed in the app's lifespan."""
    # httpx logs every request at INFO; uvicorn's access log already says what was asked.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    timeout = httpx.Timeout(
        connect=settings.private_api_connect_timeout,
        read=settings.private_api_timeout,
        write=settings.private_api_timeout,
        pool=settings.private_api_pool_timeout,
    )
    limits = httpx.Limits(
        max_connections=settings.private_api_max_connections,
        max_keepalive_connections=min(50, settings.private_api_max_connections),
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


def _request_headers(request: Request, owner: str | None) -> dict[str, str]:
    """The headers sent on to the private API: a safe subset of the client's, plus the owner."""
    headers = {name: request.headers[name] for name in _FORWARD_REQUEST if name in request.headers}
    if request.client is not None:
        headers["X-Forwarded-For"] = request.client.host
    if owner is not None:
        headers["X-Owner"] = owner
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


async def _error_response(upstream: httpx.Response) -> Response:
    """A small JSON error from the private API, passed on with its status and a flat body."""
    try:
        raw = await upstream.aread()
    finally:
        await upstream.aclose()
    headers = _response_headers(upstream)
    headers.pop("content-length", None)
    headers.pop("content-encoding", None)
    try:
        body = json.loads(raw)
    except ValueError:
        return Response(raw, status_code=upstream.status_code, headers=headers)
    return JSONResponse(_flatten(body), status_code=upstream.status_code, headers=headers)


async def _stream(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The private API's body as httpx reads it (up to 64 KiB a piece), closing the upstream however it ends."""
    # Gathering 1 MiB pieces (aiter_raw(1024 * 1024)) cost as much CPU per MiB in the benchmark: not worth the copies.
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        # Headers are already sent: the client sees a short body (Content-Length tells it so); log why.
        log.warning("private API broke off a download of %s: %s", upstream.request.url.path, exc)
    finally:
        await upstream.aclose()


def _translate(exc: httpx.HTTPError, settings: Settings) -> RelayError:
    """A transport failure towards the private API as the answer the caller gets."""
    if isinstance(exc, httpx.PoolTimeout):
        return RelayError(
            503,
            "the public API is at its limit of open requests to the private API; try again shortly",
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


async def relay(
    request: Request,
    *,
    client: httpx.AsyncClient,
    settings: Settings,
    method: str,
    path: str,
    owner: str | None,
    with_body: bool = False,
) -> Response:
    """Send one public call on to the private API and stream its answer back, status code unchanged."""
    upstream_request = client.build_request(
        method,
        _target(path, request.scope.get("query_string", b"")),
        headers=_request_headers(request, owner),
        # Streamed as it arrives: with the caller's Content-Length as is, without one chunked.
        content=request.stream() if with_body else None,
    )
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.HTTPError as exc:
        log.warning("%s %s: private API failed: %s: %s", method, path, type(exc).__name__, exc)
        raise _translate(exc, settings) from exc
    except ClientDisconnect as exc:
        log.info("%s %s: the client went away during the upload", method, path)
        raise RelayError(400, "the upload was interrupted") from exc
    if upstream.status_code == 401:
        await upstream.aclose()
        log.error("the private API refused the internal token: INTERNAL_TOKEN differs between the services")
        raise RelayError(502, "the public API is misconfigured (the private API refused it)")
    length = int(upstream.headers.get("content-length") or _MAX_ERROR_BODY + 1)
    is_json = upstream.headers.get("content-type", "").startswith("application/json")
    if upstream.status_code >= 400 and is_json and length <= _MAX_ERROR_BODY:
        return await _error_response(upstream)
    return StreamingResponse(
        _stream(upstream),
        status_code=upstream.status_code,
        headers=_response_headers(upstream),
        background=BackgroundTask(upstream.aclose),
    )


async def probe(client: httpx.AsyncClient) -> str:
    """'ok' when the private API answers its health check, else a short reason."""
    try:
        response = await client.get("/healthz", timeout=3.0)
    except httpx.HTTPError as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok" if response.status_code == 200 else f"unhealthy: HTTP {response.status_code}"
