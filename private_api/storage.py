"""Files under DATA_DIR: where each kind lives, how a finished temp file lands, and whether there is room for more."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

from common.settings import valid_uid
from private_api.errors import DiskFull
from private_api.receiving import Received, receive_body  # re-exported: routes/consumer.py imports them here

__all__ = ["Received", "Storage", "fsync_dir", "land", "receive_body"]


class Storage:
    """Where each kind of file lives under DATA_DIR."""

    def __init__(self, data_dir: Path, *, min_free_bytes: int = 0) -> None:
        self.root = data_dir
        self.min_free_bytes = min_free_bytes
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

    def staged_output_path(self, uid: str, consumer_id: str, attempt: int) -> Path:
        """Where one holder's output waits for its finish: only a finish that wins moves it to output_path."""
        holder = hashlib.sha256(consumer_id.encode()).hexdigest()[:16]
        return self._task_file("outputs", uid, f".{int(attempt)}-{holder}.staged")

    def remove_staged_outputs(self, uid: str) -> None:
        """Remove every holder's staged output of a task (those of stale holders never land)."""
        self._task_file("outputs", uid, "")  # checks the uid
        for staged in (self.root / "outputs").glob(f"{uid}.*.staged"):
            staged.unlink(missing_ok=True)

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

    def clean_temp(self, idle_seconds: float) -> int:
        """Remove temp files a crashed upload left behind: those not written to for idle_seconds; how many went.

        A live upload writes to its file at least every UPLOAD_IDLE_TIMEOUT_SECONDS (or is dropped), so another
        private API instance's uploads on the same DATA_DIR are left alone.
        """
        removed = 0
        cutoff = time.time() - idle_seconds
        for leftover in (self.root / "tmp").glob("*.part"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def remove_task_files(self, uid: str) -> None:
        """Delete a task's input, output and log."""
        for path in (self.input_path(uid), self.output_path(uid), self.log_path(uid)):
            path.unlink(missing_ok=True)
        self.remove_staged_outputs(uid)

    def free_bytes(self) -> int:
        """Free bytes on the file system of DATA_DIR."""
        return shutil.disk_usage(self.root).free

    def require_room(self, incoming: int = 0) -> None:
        """DiskFull (507) when DATA_DIR has less than MIN_FREE_DISK_BYTES free, or would have after incoming bytes."""
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise DiskFull(
                f"the server's disk is too full for this upload ({free} bytes free, "
                f"{self.min_free_bytes} must stay free); try again later"
            )


def fsync_dir(folder: Path) -> None:
    """Make a rename into folder durable (the directory entry is on disk, not only the file's bytes)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def land(temp: Path, final: Path) -> None:
    """Move a finished (already fsynced) temp file into place atomically and durably."""
    os.replace(temp, final)
    fsync_dir(final.parent)
