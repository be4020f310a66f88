"""A lean pooled HTTP/1.1 client for the private API: asyncio transports and the httptools parser, streamed both ways.

The relay only ever talks to one plain-HTTP upstream on a trusted network, so a general client (httpx) spends most of
a relayed call on features it does not need; this one costs a fraction of it per request and reads the upstream's
bytes in whatever size the event loop read them, coalescing what arrived while the caller was busy.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = [
    "BrokenOff",
    "ConnectFailed",
    "ConnectTimedOut",
    "PoolTimedOut",
    "ReadTimedOut",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
]

log = logging.getLogger(__name__)

# Reading pauses once this much of a response body waits for the caller: memory stays bounded per request.
MAX_BUFFERED = 1024 * 1024
# How long an idle connection is reused: below the private API's keep-alive timeout (75 s, see private_api/__main__),
# so that it is not closed under a request. A bodiless request that still meets a closed one is retried on a fresh
# connection; a request with a body (an upload cannot be replayed) reuses only connections idle for less than 4 s,
# which even a private API with uvicorn's default timeout (5 s) keeps open.
IDLE_EXPIRY = 60.0
IDLE_EXPIRY_WITH_BODY = 4.0
_CRLF = b"\r\n"


class UpstreamError(Exception):
    """The private API could not be reached or broke off; the subclass says how."""


class ConnectFailed(UpstreamError):
    """No connection: refused, unknown host, unreachable."""


class ConnectTimedOut(UpstreamError):
    """No connection within the connect timeout."""


class PoolTimedOut(UpstreamError):
    """Every connection slot stayed busy for the pool timeout."""


class ReadTimedOut(UpstreamError):
    """The private API stayed silent (or did not take the body) for the read/write timeout."""


class BrokenOff(UpstreamError):
    """The connection closed or sent something that is not HTTP/1.1 in the middle of an exchange."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses the response into a bounded buffer of body chunks."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self.received_any = False
        self.abandoned = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        self._error: UpstreamError | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._complete:
            self._unasked()
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._complete:
                self._unasked()  # on_message_begin stopped the parser at a second answer
            else:
                self._fail(BrokenOff(f"the private API sent something that is not HTTP: {exc}"))
            return
        if self._buffered >= MAX_BUFFERED and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._complete:
            self._fail(BrokenOff(f"the private API closed the connection ({exc or 'end of stream'})"))
        self._resume_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume_writer()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            # Stops the parser at a second answer in the same bytes: feed_data raises HttpParserCallbackError.
            raise BrokenOff("the private API sent an answer nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        # Asked here: once the callback returns, httptools answers False for every message.
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True
        self._wake()

    # used by the pool and the response

    def _unasked(self) -> None:
        """Bytes after a complete answer, before the next request: the connection cannot be trusted any more."""
        self.close()

    def reset(self) -> None:
        """Ready for the next request on the same connection."""
        self._parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._headers_done = self._complete = self._keep_alive = self.received_any = self.abandoned = False
        self._chunks.clear()
        self._buffered = 0
        self._error = None

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _resume_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def _wait(self, timeout: float) -> None:
        """Wait for the parser to make progress (or the connection to fail) for at most `timeout` seconds."""
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup
        except TimeoutError:
            self._fail(ReadTimedOut(f"the private API sent nothing for {timeout:g}s"))
        finally:
            self._wakeup = None

    def write(self, data: bytes) -> None:
        """Queue bytes on the socket (the event loop writes what it can right away)."""
        if self._error is not None:
            raise self._error
        if self.closed or self.transport is None:
            raise BrokenOff("the private API closed the connection")
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        """Wait until the socket took what was written, at most `timeout` seconds of it not moving."""
        if not self._write_paused or self.closed:
            return
        self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._drained
        except TimeoutError:
            self._fail(ReadTimedOut(f"the private API took no data for {timeout:g}s"))
        finally:
            self._drained = None
        if self._error is not None:
            raise self._error

    async def read_head(self, timeout: float) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The response's status code and headers (lower-case names)."""
        while not self._headers_done and self._error is None:
            await self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._parser.get_status_code(), self._headers

    async def read_body(self, timeout: float) -> bytes:
        """All body bytes buffered now (waiting for some first), joined; b"" once the body is complete."""
        while not self._chunks and not self._complete and self._error is None:
            await self._wait(timeout)
        if self._chunks:
            data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            if self._reading_paused and self.transport is not None and not self.closed:
                self._reading_paused = False
                self.transport.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        return b""

    @property
    def reusable(self) -> bool:
        """True when the last exchange ended cleanly and both sides keep the connection open."""
        return self._complete and not self.abandoned and self._error is None and not self.closed and self._keep_alive

    @property
    def answered(self) -> bool:
        """True once the response head is in (the upstream may answer before it has read a request body)."""
        return self._headers_done

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class UpstreamResponse:
    """A response whose body is read on demand; close it (or read it to the end) to free its connection slot."""

    def __init__(
        self, pool: UpstreamPool, conn: _Connection, status: int, headers: list[tuple[bytes, bytes]], path: str
    ) -> None:
        self.status_code = status
        self.raw_headers = headers
        self.path = path
        self._pool = pool
        self._conn: _Connection | None = conn

    def header(self, name: str, default: str = "") -> str:
        """The first value of a header (name in lower case), or `default`."""
        key = name.encode()
        for header_name, value in self.raw_headers:
            if header_name == key:
                return value.decode("latin-1")
        return default

    async def aiter_body(self) -> AsyncIterator[bytes]:
        """The body in the chunks that arrived (up to MAX_BUFFERED each); the connection is released at the end."""
        try:
            while self._conn is not None:
                data = await self._conn.read_body(self._pool.read_timeout)
                if not data:
                    break
                yield data
        finally:
            await self.aclose()

    async def aread(self, limit: int) -> bytes:
        """The whole body, at most `limit` bytes (BrokenOff past it)."""
        parts: list[bytes] = []
        size = 0
        async for data in self.aiter_body():
            size += len(data)
            if size > limit:
                await self.aclose()
                raise BrokenOff(f"the private API sent more than {limit} bytes where a short answer was expected")
            parts.append(data)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Give the connection back (idle when reusable, else closed) and free the slot; idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class UpstreamPool:
    """Keep-alive connections to one `http(s)://host:port` upstream, at most `max_connections` busy at a time."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        connect_timeout: float,
        read_timeout: float,
        pool_timeout: float,
        max_connections: int,
        max_idle: int,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the upstream must be an http(s)://host[:port] URL, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        # The private API is normally plain HTTP on the internal network; https is verified against the system CAs.
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        fixed = {"host": host_header, **{name.lower(): value for name, value in headers.items()}}
        self._fixed = b"".join(_header_line(name, value) for name, value in fixed.items())
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.max_idle = max_idle
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._closed = False
        # Connections opened so far: with keep-alive working it stays near the number of concurrent requests.
        self.opened = 0

    async def _connect(self) -> _Connection:
        """A new connection (TCP_NODELAY is set by asyncio for TCP)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl)
        except TimeoutError as exc:
            raise ConnectTimedOut(f"no connection to {self.host}:{self.port} within {self.connect_timeout:g}s") from exc
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self.opened += 1
        return conn

    def _prune(self, now: float) -> None:
        """Close idle connections the upstream closed or that were idle too long (the oldest are on the left)."""
        while self._idle and (self._idle[0].closed or now - self._idle[0].idle_since >= IDLE_EXPIRY):
            self._idle.popleft().close()

    def _take_idle(self, max_idle: float) -> _Connection | None:
        """The most recently used idle connection that is open and idle for less than `max_idle` s, or None."""
        now = time.monotonic()
        self._prune(now)
        while self._idle:
            conn = self._idle[-1]
            if now - conn.idle_since >= max_idle:
                # Too old for this request (the others are older still), yet good for a later bodiless one.
                return None
            self._idle.pop()
            if not conn.closed:
                return conn
        return None

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: AsyncIterable[bytes] | None = None,
        read_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send a request (a body streamed as is with its content-length, else chunked); the response head."""
        if self._closed:
            raise ConnectFailed("the client is closed")
        try:
            async with asyncio.timeout(self.pool_timeout):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise PoolTimedOut(f"no free connection to the private API within {self.pool_timeout:g}s") from exc
        try:
            return await self._exchange(method, target, headers, body, read_timeout or self.read_timeout)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: AsyncIterable[bytes] | None,
        timeout: float,
    ) -> UpstreamResponse:
        """One exchange on a pooled connection; a bodiless request that finds a reused connection dead is retried."""
        head = self._head(method, target, headers, body)
        for attempt in (1, 2):
            conn = self._take_idle(IDLE_EXPIRY if body is None else IDLE_EXPIRY_WITH_BODY) if attempt == 1 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            conn.reset()
            try:
                conn.write(head)
                if body is not None:
                    await self._send_body(conn, body, chunked=b"transfer-encoding: chunked" in head, timeout=timeout)
                status, response_headers = await conn.read_head(timeout)
            except BrokenOff:
                conn.close()
                # A reused connection the upstream closed while idle: nothing was processed, so try a fresh one.
                if reused and body is None and attempt == 1 and not conn.received_any:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return UpstreamResponse(self, conn, status, response_headers, target)
        raise AssertionError("unreachable")

    def _head(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: AsyncIterable[bytes] | None
    ) -> bytes:
        """The request line and headers; without a content-length, a body goes chunked."""
        lines = [f"{method} {self.prefix}{target} HTTP/1.1\r\n".encode("latin-1"), self._fixed]
        has_length = False
        for name, value in headers:
            lower = name.lower()
            if lower in ("host", "transfer-encoding", "connection"):
                continue
            has_length = has_length or lower == "content-length"
            lines.append(_header_line(lower, value))
        if body is None:
            if not has_length and method in ("POST", "PUT", "PATCH"):
                lines.append(b"content-length: 0\r\n")
        elif not has_length:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(_CRLF)
        return b"".join(lines)

    async def _send_body(self, conn: _Connection, body: AsyncIterable[bytes], *, chunked: bool, timeout: float) -> None:
        """Write the body as it comes, waiting for the socket when the upstream reads slower than the caller sends."""
        async for data in body:
            if conn.answered:
                # The upstream answered before reading it all (an error such as 413 or 550): the rest is not needed,
                # and the connection, left mid-body, is not reused.
                conn.abandoned = True
                return
            if not data:
                continue
            if chunked:
                conn.write(b"%x\r\n" % len(data) + data + _CRLF)
            else:
                conn.write(data)
            await conn.drain(timeout)
        if chunked and not conn.answered:
            conn.write(b"0\r\n\r\n")

    def release(self, conn: _Connection) -> None:
        """Back to the idle list when it can carry another request, else closed; frees the slot."""
        try:
            now = time.monotonic()
            self._prune(now)
            if conn.reusable and not self._closed and len(self._idle) < self.max_idle:
                conn.idle_since = now
                self._idle.append(conn)
            else:
                conn.close()
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        """Close every idle connection and refuse new requests."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


def _header_line(name: str, value: str) -> bytes:
    """One header line; a CR or LF in a name or value is refused (it would split the request)."""
    if any(c in name or c in value for c in "\r\n\0") or not name or ":" in name:
        raise ValueError(f"refusing header {name!r}: it contains a line break, NUL or colon")
    return f"{name}: {value}\r\n".encode("latin-1")
