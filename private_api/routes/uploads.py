"""Receiving a zip upload: streamed to a temp file, checked, and either landed by the caller or removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from common.zips import UnsafeZipError, ZipLimits, check_zip
from private_api.errors import BadUpload
from private_api.storage import Received, Storage, receive_multipart_file

ZIP_FORM: dict[str, Any] = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"zip_file": {"type": "string", "format": "binary"}},
                }
            }
        }
    }
}


def _check(path: Path, limits: ZipLimits) -> None:
    try:
        check_zip(path, limits)
    except UnsafeZipError as exc:
        raise BadUpload(str(exc)) from exc


async def receive_zip(request: Request, *, storage: Storage, max_bytes: int, limits: ZipLimits) -> Received | None:
    """The checked `zip_file` part of a multipart request in a temp file, or None when there is none."""
    received = await receive_multipart_file(request, "zip_file", storage.temp_path(), max_bytes)
    if received is None:
        return None
    try:
        if received.size == 0:
            raise BadUpload("the uploaded zip_file is empty")
        await run_in_threadpool(_check, received.path, limits)
    except BaseException:
        received.path.unlink(missing_ok=True)
        raise
    return received
