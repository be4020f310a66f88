"""The SDK's plumbing: one httpx client per `InferenceClient`, and every failure turned into the SDK's errors."""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

import httpx

from inference_client.errors import (
    BadRequestError,
    ConnectionFailedError,
    InferenceServerError,
    InternalServerError,
    ServerBusyError,
    TaskNotFoundError,
    error_from_response,
)
from inference_client.uploads import Body, ProgressCallback

__all__ = ["DEFAULT_TIMEOUT", "HttpClient"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(connect=15.0, read=120.0, write=120.0, pool=15.0)
# Once a multi-GB upload is sent the server still checks and stores it before it answers.
_UPLOAD_READ_TIMEOUT = 1800.0
_CHUNK = 1024 * 1024
# Resends of a submission whose answer was lost (it carries an Idempotency-Key, so a resend makes no second task).
_LOST_ANSWER_RETRIES = 2
_UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _verify(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """What httpx verifies the server with: a CA certificate file becomes an SSL context."""
    if not isinstance(verify, str):
        return verify
    if not Path(verify).is_file():
        raise ValueError(f"CA certificate file not found: {verify}")
    try:
        return ssl.create_default_context(cafile=verify)
    except ssl.SSLError as exc:
        raise ValueError(f"{verify} is not a PEM CA certificate: {exc}") from exc


class HttpClient:
    """Talks HTTP to one server; use as a context manager or call `close()`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        internal_token: str | None = None,
        verify: bool | str | ssl.SSLContext = True,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        busy_retry_seconds: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url or not re.match(r"^https?://[^/]", base_url):
            raise ValueError(f"server URL must start with http:// or https://, got {base_url!r}")
        all_headers = {"User-Agent": "inference-server-client/0.1", "Accept": "application/json"}
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        if internal_token:
            # Operators on the internal network may talk to the private API directly.
            all_headers["X-Internal-Token"] = internal_token
        all_headers.update(headers or {})
        self.base_url = base_url.rstrip("/")
        self.busy_retry_seconds = busy_retry_seconds
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=all_headers,
            verify=_verify(verify),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    @contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """Send a request and yield the streamed response, raising the SDK error for any failure."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 300:
                    response.read()
                    raise self._error(response)
                yield response
        except httpx.TimeoutException as exc:
            raise ConnectionFailedError(f"{method} {self.base_url}{path} timed out ({exc})") from exc
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"cannot reach {self.base_url}: {exc}") from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request, read the whole answer, and raise the SDK error for any failure."""
        with self._stream(method, path, **kwargs) as response:
            response.read()
            return response

    @staticmethod
    def _error(response: httpx.Response) -> InferenceServerError:
        """The SDK error for an error response."""
        text = response.text
        try:
            body = response.json()
        except ValueError:
            body = None
        if 300 <= response.status_code < 400:
            where = response.headers.get("location", "?")
            return BadRequestError(
                f"server answered a redirect to {where}; check the server URL (http vs https, path)",
                status_code=response.status_code,
            )
        return error_from_response(response.status_code, body, text, dict(response.headers))

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        """The JSON body, or a clear error when the server sent something else."""
        try:
            return response.json()
        except ValueError as exc:
            raise InferenceServerError(
                f"expected JSON from {response.request.url}, got {response.text[:200]!r}",
                status_code=response.status_code,
            ) from exc

    @staticmethod
    def _uid(uid: str) -> str:
        """A task uid checked for shape, so it cannot change the URL path."""
        if not isinstance(uid, str) or not _UID_RE.fullmatch(uid):
            raise TaskNotFoundError(f"task not found: {uid!r} is not a task uid (letters, digits, '-', '_')")
        return uid

    @staticmethod
    def _hid(human_readable_id: str) -> str:
        """A model id quoted for a URL path."""
        if not human_readable_id:
            raise BadRequestError("a model's human_readable_id must not be empty")
        return quote(human_readable_id, safe="")

    def _send_body(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        body: Body | None,
        progress: ProgressCallback | None,
        on_busy: Callable[[float], None] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send a (possibly streamed) body, waiting and resending while the server answers 429/503 (with the same
        `headers` each time, e.g. one Idempotency-Key)."""
        deadline = time.monotonic() + self.busy_retry_seconds
        delay = 2.0
        lost_answers = _LOST_ANSWER_RETRIES
        while True:
            try:
                if body is None:
                    return self._request(method, path, params=params, headers=headers)
                timeout = self._http.timeout
                upload_timeout = httpx.Timeout(
                    connect=timeout.connect,
                    read=max(timeout.read or 0, _UPLOAD_READ_TIMEOUT),
                    write=timeout.write,
                    pool=timeout.pool,
                )
                return self._request(
                    method,
                    path,
                    params=params,
                    content=body.chunks(progress),
                    headers={**(headers or {}), **body.headers()},
                    timeout=upload_timeout,
                )
            except (ConnectionFailedError, InternalServerError) as exc:
                # The answer may be lost (a broken connection, a gateway's 502/504) after the server made the task:
                # with an Idempotency-Key the same request again answers that task instead of making a second one.
                lost = isinstance(exc, ConnectionFailedError) or exc.status_code in (502, 504)
                replayable = body is None or body.total_source_bytes is not None
                if not (lost and replayable and lost_answers > 0 and "Idempotency-Key" in (headers or {})):
                    raise
                lost_answers -= 1
                logger.info("no answer (%s); sending it again with the same Idempotency-Key", exc.message)
                self._sleep(1.0)
            except ServerBusyError as exc:
                wait = exc.retry_after if exc.retry_after is not None else delay
                if time.monotonic() + wait > deadline or (body is not None and body.total_source_bytes is None):
                    raise
                logger.info("server busy (%s); retrying in %.0f s", exc.message, wait)
                if on_busy:
                    on_busy(wait)
                self._sleep(wait)
                delay = min(delay * 2, 60.0)

    def _fetch_into(
        self,
        path: str,
        out: IO[bytes],
        progress: ProgressCallback | None,
        on_start: Callable[[int | None], None] | None,
    ) -> None:
        """Stream a GET answer into an open file."""
        with self._stream("GET", path, headers={"Accept": "application/zip, application/json"}) as response:
            length = response.headers.get("content-length")
            if on_start:
                on_start(int(length) if length and length.isdigit() else None)
            try:
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            except httpx.TransportError as exc:
                raise ConnectionFailedError(f"download of {path} broke off: {exc}") from exc

    def health(self) -> dict[str, Any]:
        """The server's health answer (`GET /healthz`)."""
        response = self._request("GET", "/healthz")
        try:
            data = response.json()
        except ValueError:
            data = {"status": response.text.strip() or "ok"}
        return data if isinstance(data, dict) else {"status": data}
