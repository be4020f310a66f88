"""Receiving a zip upload: streamed to a temp file, checked, and either landed by the caller or removed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import Request
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from common.zips import UnsafeZipError, ZipSettings, check_zip
from private_api import metrics
from private_api.config import Settings
from private_api.errors import BadUpload, DiskFull
from private_api.receiving import Received, disk_full, receive_multipart_file
from private_api.storage import Storage

# How SQLite and PostgreSQL say that the disk under the database is full.
_DB_FULL = ("database or disk is full", "no space left on device", "could not extend file")


@contextmanager
def disk_errors() -> Iterator[None]:
    """Turn a full disk under DATA_DIR or the database into DiskFull (507)."""
    try:
        yield
    except OSError as exc:
        full = disk_full(exc)
        if full is None:
            raise
        raise full from exc
    except OperationalError as exc:
        if any(words in str(exc.orig).lower() for words in _DB_FULL):
            raise DiskFull("the server's disk is full; nothing was stored, try again later") from exc
        raise


def _check(path: Path, limits: ZipSettings) -> None:
    try:
        check_zip(path, limits)
    except UnsafeZipError as exc:
        raise BadUpload(str(exc)) from exc


async def receive_zip(request: Request, *, storage: Storage, settings: Settings) -> Received | None:
    """The checked `zip_file` part of a multipart request in a temp file, or None when there is none."""
    received = await receive_multipart_file(request, "zip_file", storage.temp_path(), settings.max_upload_bytes)
    if received is None:
        return None
    metrics.count_received("model" if request.url.path.startswith("/api/models") else "input", received.size)
    try:
        if received.size == 0:
            raise BadUpload("the uploaded zip_file is empty")
        await run_in_threadpool(_check, received.path, settings.zip_limits)
    except BaseException:
        received.path.unlink(missing_ok=True)
        raise
    return received
