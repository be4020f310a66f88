"""Receiving an upload: the body streams into a temp file, hashed and counted on the way; a failure leaves nothing.

The event loop only collects the body's chunks; a worker thread parses them (python-multipart's streaming parser, for a
multipart body), hashes and writes the file, one batch in flight per upload, so memory stays bounded whatever the size.
A client that sends nothing for UPLOAD_IDLE_TIMEOUT_SECONDS is dropped (408); a disk below MIN_FREE_DISK_BYTES or a
full disk answers 507.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from anyio import to_thread
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from private_api.errors import ApiError, BadUpload, DiskFull, UploadTimeout, UploadTooLarge

if TYPE_CHECKING:
    from private_api.storage import Storage

__all__ = ["Received", "disk_full", "receive_body", "receive_multipart_file", "receive_tail"]

_FLUSH_BYTES = 4 * 1024 * 1024
_DRAIN_BYTES = 256 * 1024**2
_SLACK_BYTES = 64 * 1024  # multipart framing around the file


@dataclass(frozen=True)
class Received:
    """An upload that landed in a temp file."""

    path: Path
    size: int
    sha256: str


def disk_full(exc: BaseException) -> DiskFull | None:
    """The DiskFull answer for an OSError that says the disk (or a quota) is full, else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull("the server's disk is full; nothing was stored, try again later")
    return None


class _Sink:
    """A temp file fed in batches of the body's chunks, which a worker thread parses (through feed), hashes and writes.

    One batch is written while the next is received (at most one write in flight, so memory stays bounded).
    """

    def __init__(self, path: Path, max_bytes: int, storage: Storage, feed: _Feed | None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.storage = storage
        self.feed = feed
        self.size = 0
        self.hash = hashlib.sha256()
        self.chunks: list[bytes] = []  # received, not yet handed to the worker thread
        self.pending = 0
        self.file = open(path, "wb")  # noqa: SIM115 - closed in finish() or abort()
        self.writing: asyncio.Future[None] | None = None

    async def take(self, chunk: bytes) -> None:
        """Collect a chunk of the body; hand the collected chunks to the worker thread once they are large."""
        self.chunks.append(chunk)
        self.pending += len(chunk)
        await self.flush()

    def add(self, data: bytes | memoryview) -> None:
        """Hash and write a piece of the file, in the worker thread (UploadTooLarge past the maximum)."""
        self.size += len(data)
        if self.size > self.max_bytes:
            raise UploadTooLarge(f"upload is larger than the maximum of {self.max_bytes} bytes")
        self.hash.update(data)
        self.file.write(data)

    def _write(self, chunks: list[bytes]) -> None:
        self.storage.require_room()
        for chunk in chunks:
            if self.feed is None:
                self.add(chunk)
            else:
                self.feed.write(chunk, self)

    def _close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    async def _written(self) -> None:
        """Wait for the write in flight; its error, if any, is raised here."""
        writing, self.writing = self.writing, None
        if writing is not None:
            await writing

    async def flush(self, *, force: bool = False) -> None:
        """Start writing the collected chunks once they are large (or whatever is left, when forced)."""
        if self.chunks and (force or self.pending >= _FLUSH_BYTES):
            chunks, self.chunks, self.pending = self.chunks, [], 0
            await self._written()
            self.writing = asyncio.ensure_future(_on_disk(self._write, chunks))
        if force:
            await self._written()

    async def finish(self) -> Received:
        """Write the rest, fsync and close; what landed."""
        await self.flush(force=True)
        await _on_disk(self._close)
        return Received(self.path, self.size, self.hash.hexdigest())

    def abort(self) -> None:
        """Close and remove the temp file (once the write in flight, if any, is done with it)."""
        writing, self.writing = self.writing, None
        if writing is None or writing.done():
            self._discard(writing)
        else:
            writing.add_done_callback(self._discard)

    def _discard(self, writing: asyncio.Future[None] | None) -> None:
        if writing is not None and not writing.cancelled():
            writing.exception()  # retrieved: the upload failed already, for this reason or another
        self.file.close()
        self.path.unlink(missing_ok=True)


async def _on_disk(work: Callable[..., None], *args: object) -> None:
    """Run a blocking file step in a worker thread; a full disk becomes DiskFull."""
    try:
        await to_thread.run_sync(work, *args)
    except OSError as exc:
        full = disk_full(exc)
        if full is None:
            raise
        raise full from exc


async def _chunks(request: Request, idle_seconds: float) -> AsyncIterator[bytes]:
    """The body's chunks; UploadTimeout when none comes for idle_seconds, BadUpload when the client goes away."""
    stream = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_seconds):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise UploadTimeout(f"the upload sent nothing for {idle_seconds:g} seconds and was dropped") from exc
        except ClientDisconnect as exc:
            raise BadUpload("the upload was interrupted") from exc
        if chunk:
            yield chunk


async def _drain(request: Request) -> None:
    """Read and drop what is left of a refused body (up to a bound), so the client gets to read our answer."""
    dropped = 0
    try:
        async for chunk in _chunks(request, 5.0):
            dropped += len(chunk)
            if dropped > _DRAIN_BYTES:
                return
    except (ApiError, RuntimeError):
        return


def _before_reading(request: Request, max_bytes: int) -> tuple[Storage, float]:
    """Refuse from the headers alone what can be refused; the storage and the idle timeout."""
    storage: Storage = request.app.state.storage
    declared = request.headers.get("content-length", "")
    incoming = int(declared) if declared.isdigit() else 0
    if incoming > max_bytes + _SLACK_BYTES:
        raise UploadTooLarge(f"upload is larger than the maximum of {max_bytes} bytes")
    storage.require_room(incoming)
    return storage, float(request.app.state.settings.upload_idle_timeout_seconds)


async def _receive(request: Request, temp: Path, max_bytes: int, feed: _Feed | None) -> Received | None:
    """Stream the body (through feed, when it is multipart) into temp; None when feed found no file part."""
    try:
        storage, idle = _before_reading(request, max_bytes)
    except (UploadTooLarge, DiskFull):
        await _drain(request)
        raise
    try:
        sink = _Sink(temp, max_bytes, storage, feed)
    except OSError as exc:
        full = disk_full(exc)
        if full is None:
            raise
        raise full from exc
    try:
        async for chunk in _chunks(request, idle):
            await sink.take(chunk)
        await sink.flush(force=True)
        if feed is not None and not feed.finish():
            sink.abort()
            return None
        return await sink.finish()
    except (UploadTooLarge, DiskFull):
        sink.abort()
        await _drain(request)
        raise
    except BaseException:
        sink.abort()
        raise


async def receive_body(request: Request, temp: Path, max_bytes: int) -> Received:
    """Stream a raw request body into temp."""
    received = await _receive(request, temp, max_bytes, None)
    assert received is not None
    return received


async def receive_tail(request: Request, keep: int) -> bytes:
    """The last keep bytes of a raw request body (a log), read with the same idle timeout as every upload."""
    tail = bytearray()
    async for chunk in _chunks(request, float(request.app.state.settings.upload_idle_timeout_seconds)):
        tail += chunk
        if len(tail) > 2 * keep:
            del tail[: len(tail) - keep]
    return bytes(tail[-keep:])


class _Feed:
    """Feeds a multipart body to python-multipart's parser; the bytes of the part named field go to the sink."""

    def __init__(self, boundary: bytes, field: str) -> None:
        self.field = field
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.disposition = b""
        self.sink: _Sink | None = None
        self.in_file = self.seen = self.done = False
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self.header_name.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self.header_value.extend(data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def _part_begin(self) -> None:
        self.disposition = b""

    def _header_end(self) -> None:
        if bytes(self.header_name).strip().lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.in_file = not self.seen and options.get(b"name", b"").decode(errors="replace") == self.field
        self.seen = self.seen or self.in_file

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file and self.sink is not None:
            self.sink.add(memoryview(data)[start:end])

    def _part_end(self) -> None:
        self.done = self.done or self.in_file
        self.in_file = False

    def write(self, chunk: bytes, sink: _Sink) -> None:
        """Parse a chunk of the body."""
        self.sink = sink
        try:
            self.parser.write(chunk)
        except (ApiError, OSError):  # too large, or the disk's: not the body's fault
            raise
        except Exception as exc:
            raise BadUpload(f"malformed multipart body: {exc}") from exc

    def finish(self) -> bool:
        """True when the file part came whole; False when there was none; BadUpload when it was cut short."""
        self.parser.finalize()
        if self.seen and not self.done:
            raise BadUpload("the upload was interrupted (the multipart body ended early)")
        return self.seen


async def receive_multipart_file(request: Request, field: str, temp: Path, max_bytes: int) -> Received | None:
    """Stream the multipart file part named field into temp; None when the request has no such part."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        if request.headers.get("content-length", "0") == "0" and not request.headers.get("transfer-encoding"):
            return None
        raise BadUpload(f"send the file as multipart/form-data in the field {field!r}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadUpload("multipart/form-data without a boundary")
    return await _receive(request, temp, max_bytes, _Feed(boundary, field))
