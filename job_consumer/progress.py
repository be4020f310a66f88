"""Report: the task's phase and the model's progress, sent with each lease heartbeat (a phase change at once).

A model may write `0.42 message` or `42% message` to $PROGRESS_FILE (default /output/.progress); the consumer reads
the file's last line from the host side of the /output mount with each heartbeat, never following a link and never
waiting on a pipe. What cannot be read as a fraction is ignored; the file never goes into the output zip.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from job_consumer.errors import LeaseLost, PrivateApiError
from job_consumer.private_api import PrivateApiClient
from job_consumer.sandbox import DEFAULT_PROGRESS_FILE
from job_consumer.schemas import Progress

__all__ = [
    "DEFAULT_PROGRESS_FILE",
    "MAX_MESSAGE",
    "Progress",
    "Reporter",
    "parse_progress",
    "read_progress",
]

log = logging.getLogger(__name__)

MAX_MESSAGE = 200  # characters of the model's message that reach the status
_READ_BYTES = 4096  # only the file's tail is read: a model that appends lines is read at its latest


def _clean_message(text: str) -> str | None:
    """The message without control characters, bounded; None when nothing is left."""
    printable = "".join(c if c.isprintable() else " " for c in text).strip()
    if len(printable) > MAX_MESSAGE:
        printable = printable[: MAX_MESSAGE - 1].rstrip() + "…"
    return printable or None


def parse_progress(text: str) -> Progress | None:
    """The last non-empty line as `0.42 msg` or `42% msg` (clamped to 0..1); None for anything else."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    number, _, message = lines[-1].partition(" ")
    percent = number.endswith("%")
    try:
        value = float(number[:-1] if percent else number)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if percent:
        value /= 100
    return Progress(fraction=min(1.0, max(0.0, value)), message=_clean_message(message))


def read_progress(path: Path) -> Progress | None:
    """Read and parse the progress file; None when it is absent, not a regular file or not a fraction."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > _READ_BYTES:
            source.seek(info.st_size - _READ_BYTES)
        data = source.read(_READ_BYTES)
    return parse_progress(data.decode("utf-8", "replace"))


class Reporter:
    """The lease heartbeat of one task: every few seconds, and at once when the phase changes."""

    def __init__(
        self, api: PrivateApiClient, uid: str, attempt: int, *, interval: float, on_lost: Callable[[], None]
    ) -> None:
        self.api = api
        self.uid = uid
        self.attempt = attempt
        self.interval = interval
        self.on_lost = on_lost
        self.phase = "preparing"
        self.progress_path: Path | None = None
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{uid}", daemon=True)

    def start(self) -> None:
        """Beat now (phase preparing), then every interval."""
        self._wake.set()
        self._thread.start()

    def set_phase(self, phase: str, progress_path: Path | None = None) -> None:
        """Enter a phase (preparing, running, uploading); the next beat goes out now."""
        self.phase = phase
        if progress_path is not None:
            self.progress_path = progress_path
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """No more beats (the task's final state is stored, or it was given back)."""
        self._done.set()
        self._wake.set()
        with contextlib.suppress(RuntimeError):
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._done.is_set():
                return
            if not self._beat():
                return

    def _beat(self) -> bool:
        """One heartbeat; False once the task is no longer ours (cancelled or taken over)."""
        progress = read_progress(self.progress_path) if self.progress_path is not None else None
        try:
            self.api.heartbeat(self.uid, self.attempt, phase=self.phase, progress=progress)
        except LeaseLost as exc:
            log.info("%s: stopping it", exc)
            self.on_lost()
            return False
        except PrivateApiError as exc:
            log.warning("heartbeat for %s failed: %s", self.uid, exc)
        except Exception:  # an odd answer must not end the heartbeats: the lease would run out mid-task
            log.exception("heartbeat for %s failed", self.uid)
        return True
