"""Where a task's output goes: a zip file (written beside it, then renamed), an open file, or a folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from common.zips import UnsafeZipError, ZipLimits, safe_extract
from inference_client.errors import BadRequestError, InferenceServerError

__all__ = ["Fetch", "is_zip_path", "save_output"]

Fetch = Callable[[IO[bytes]], None]
"""Streams the output zip into an open file."""


def is_zip_path(path: str | os.PathLike[str]) -> bool:
    """True when the path names a zip file rather than a folder (by its `.zip` suffix)."""
    return str(path).lower().endswith(".zip")


def save_output(fetch: Fetch, dest: str | os.PathLike[str] | IO[bytes], zip_limits: ZipLimits | None) -> Path | None:
    """Fetch into `dest`: a path ending in .zip, an open file, or a folder (unpacked); the path written, or None."""
    if not isinstance(dest, str | os.PathLike):
        fetch(dest)
        return None
    target = Path(dest)
    if is_zip_path(target):
        _save_zip(fetch, target)
        return target
    if target.exists() and not target.is_dir():
        raise BadRequestError(f"{target} exists and is not a folder; give a folder or a path ending in .zip")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inference-output-") as tmp:
        zip_path = Path(tmp) / "output.zip"
        with open(zip_path, "wb") as out:
            fetch(out)
        try:
            safe_extract(zip_path, target, zip_limits or ZipLimits())
        except UnsafeZipError as exc:
            raise InferenceServerError(f"the output zip cannot be unpacked safely: {exc}") from exc
    return target


def _save_zip(fetch: Fetch, target: Path) -> None:
    """Written beside the target and renamed at the end: an interrupted download leaves no half zip."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fetch(out)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
