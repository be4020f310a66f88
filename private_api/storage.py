"""Files under DATA_DIR: uploads stream to a temp file and land by rename; nothing is held whole in memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from anyio import to_thread
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from common.settings import valid_uid
from private_api.errors import BadUpload, UploadTooLarge

_FLUSH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Received:
    """An upload that landed in a temp file."""

    path: Path
    size: int
    sha256: str


class Storage:
    """Where each kind of file lives under DATA_DIR."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        for folder in ("inputs", "outputs", "models", "logs", "tmp"):
            (data_dir / folder).mkdir(parents=True, exist_ok=True)

    def _task_file(self, folder: str, uid: str, suffix: str) -> Path:
        if not valid_uid(uid):
            raise ValueError(f"not a task uid: {uid!r}")
        return self.root / folder / f"{uid}{suffix}"

    def input_path(self, uid: str) -> Path:
        """The input zip of a task."""
        return self._task_file("inputs", uid, ".zip")

    def output_path(self, uid: str) -> Path:
        """The output zip of a task."""
        return self._task_file("outputs", uid, ".zip")

    def log_path(self, uid: str) -> Path:
        """The stored container log of a task."""
        return self._task_file("logs", uid, ".log")

    def model_zip_path(self, model_id: int, sha256: str) -> Path:
        """The model zip of a model, by its database id and content hash."""
        if not sha256.isalnum():
            raise ValueError("not a sha256")
        return self.root / "models" / f"{int(model_id)}-{sha256}.zip"

    def temp_path(self) -> Path:
        """A fresh temp file name on the same file system as the final places (so rename is atomic)."""
        return self.root / "tmp" / f"{uuid.uuid4().hex}.part"

    def clean_temp(self) -> None:
        """Remove temp files a crashed upload left behind."""
        for leftover in (self.root / "tmp").glob("*.part"):
            leftover.unlink(missing_ok=True)

    def remove_task_files(self, uid: str) -> None:
        """Delete a task's input, output and log."""
        for path in (self.input_path(uid), self.output_path(uid), self.log_path(uid)):
            path.unlink(missing_ok=True)


def land(temp: Path, final: Path) -> None:
    """Move a finished temp file into place atomically."""
    os.replace(temp, final)


@lru_cache(maxsize=1)
def _writers() -> ThreadPoolExecutor:
    """The threads that hash and write upload chunks (made on first use)."""
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="upload-writer")


class _SinkFile:
    """A temp file written in large chunks from a thread, hashing and counting as it goes.

    One chunk is written while the next is received (at most one write in flight, so memory stays bounded).
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self.hash = hashlib.sha256()
        self.buffer = bytearray()
        self.file = open(path, "wb")  # noqa: SIM115 - closed in finish()/abort()
        self._writing: Future[None] | None = None

    def add(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise UploadTooLarge(f"upload is larger than the maximum of {self.max_bytes} bytes")
        self.buffer += data

    def _write(self, data: bytes) -> None:
        self.hash.update(data)
        self.file.write(data)

    async def _wait_writing(self) -> None:
        """Wait for the write in flight (its error, if any, is raised here)."""
        writing = self._writing
        if writing is not None:
            await asyncio.shield(asyncio.wrap_future(writing))
            self._writing = None

    async def flush(self, force: bool = False) -> None:
        if self.buffer and (force or len(self.buffer) >= _FLUSH_BYTES):
            data, self.buffer = bytes(self.buffer), bytearray()
            await self._wait_writing()
            self._writing = _writers().submit(self._write, data)
        if force:
            await self._wait_writing()

    async def finish(self) -> Received:
        await self.flush(force=True)

        def _close() -> None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

        await to_thread.run_sync(_close)
        return Received(self.path, self.size, self.hash.hexdigest())

    def abort(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None and not writing.done():
            # The thread still writes: drop the file once it is done (no write may land in a closed file).
            writing.add_done_callback(lambda _done: self._discard())
        else:
            self._discard()

    def _discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


_DRAIN_BYTES = 256 * 1024**2


async def drain(request: Request) -> None:
    """Read and drop what is left of a refused body (up to a bound), so the client gets to read our answer."""
    dropped = 0
    try:
        async for chunk in request.stream():
            dropped += len(chunk)
            if dropped > _DRAIN_BYTES:
                return
    except (ClientDisconnect, RuntimeError):
        return


def refuse_declared_size(request: Request, max_bytes: int) -> None:
    """413 before reading anything when Content-Length already says the body is too large."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise UploadTooLarge(f"upload is larger than the maximum of {max_bytes} bytes")


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect as exc:
        raise BadUpload("the upload was interrupted") from exc


async def receive_body(request: Request, temp: Path, max_bytes: int) -> Received:
    """Stream a raw request body into temp."""
    sink = _SinkFile(temp, max_bytes)
    try:
        refuse_declared_size(request, max_bytes)
        async for chunk in _chunks(request):
            sink.add(chunk)
            await sink.flush()
        return await sink.finish()
    except UploadTooLarge:
        sink.abort()
        await drain(request)
        raise
    except BaseException:
        sink.abort()
        raise


class _PartState:
    """Which multipart part the parser is in, and whether it is the file we want."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}
        self.in_target = False
        self.seen = False
        self.done = False

    def on_part_begin(self) -> None:
        self.headers.clear()
        self.in_target = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_field).lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get(b"content-disposition", b""))
        if disposition.get(b"name", b"").decode(errors="replace") == self.field and not self.done:
            self.in_target = self.seen = True

    def on_part_end(self) -> None:
        if self.in_target:
            self.done = True
        self.in_target = False


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

    sink: _SinkFile | None = None
    state = _PartState(field)
    pending_error: list[BaseException] = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.in_target and sink is not None and not pending_error:
            try:
                sink.add(data[start:end])
            except UploadTooLarge as exc:
                pending_error.append(exc)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": state.on_part_begin,
            "on_header_field": state.on_header_field,
            "on_header_value": state.on_header_value,
            "on_header_end": state.on_header_end,
            "on_headers_finished": state.on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": state.on_part_end,
        },
    )
    sink = _SinkFile(temp, max_bytes)
    try:
        refuse_declared_size(request, max_bytes)
        async for chunk in _chunks(request):
            try:
                parser.write(chunk)
            except Exception as exc:
                raise BadUpload(f"malformed multipart body: {exc}") from exc
            if pending_error:
                raise pending_error[0]
            await sink.flush()
        parser.finalize()
        if not state.seen:
            sink.abort()
            return None
        if not state.done:
            raise BadUpload("the upload was interrupted (the multipart body ended early)")
        return await sink.finish()
    except UploadTooLarge:
        sink.abort()
        await drain(request)
        raise
    except BaseException:
        sink.abort()
        raise
