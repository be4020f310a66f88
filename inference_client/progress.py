"""Terminal feedback for the CLI: byte progress bars, and a task's state and progress while waiting."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

from inference_client.results import TaskStatus

__all__ = ["ByteBar", "StateSpinner"]


class ByteBar:
    """A byte progress bar on stderr (silent when disabled or stderr is not a terminal)."""

    def __init__(self, description: str, *, total: int | None = None, enabled: bool = True) -> None:
        self._bar = tqdm(
            total=total,
            desc=description,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=None if enabled else True,
            leave=False,
            dynamic_ncols=True,
        )

    def update(self, nbytes: int) -> None:
        """Count bytes done."""
        self._bar.update(nbytes)

    def set_total(self, total: int | None) -> None:
        """Set the total once it is known (e.g. from Content-Length)."""
        self._bar.total = total
        self._bar.refresh()

    def __enter__(self) -> ByteBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.close()


class StateSpinner:
    """Shows a task's state while waiting.

    On a terminal: one redrawn line with a spinner, the phase, a progress bar when the model reports progress, and
    the time waited (a small thread keeps it turning while a long poll blocks). Otherwise one line per change of
    status, phase, message or whole percent.
    """

    _FRAMES = "|/-\\"
    _BAR = 20

    def __init__(self, uid: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.uid = uid
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._frames = itertools.cycle(self._FRAMES)
        self._start = time.monotonic()
        self._last_line = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @classmethod
    def bar(cls, fraction: float) -> str:
        """A text progress bar: `[#######-------------]  35%`."""
        fraction = min(max(fraction, 0.0), 1.0)
        done = int(fraction * cls._BAR)
        return f"[{'#' * done}{'-' * (cls._BAR - done)}] {int(fraction * 100):3d}%"

    def describe(self, status: TaskStatus, *, with_bar: bool = False) -> str:
        """One line about where the task stands."""
        text = f"task {self.uid}: {status.status}"
        if status.status == "running" and status.phase and status.phase != "running":
            text += f" ({status.phase})"
        if status.status == "pending" and status.queue_position is not None:
            text += f" (queue position {status.queue_position})"
        if status.attempt and status.attempt > 1:
            text += f" (attempt {status.attempt})"
        if status.progress is not None and not status.is_final:
            text += " " + (self.bar(status.progress) if with_bar else f"{int(status.progress * 100)}%")
        if status.progress_message and not status.is_final:
            text += f" {status.progress_message}"
        return text

    def __call__(self, status: TaskStatus) -> None:
        """Report a fresh status."""
        if not self.enabled:
            return
        line = self.describe(status, with_bar=self._tty)
        if not self._tty and line != self._last_line:
            self.stream.write(line + "\n")
            self.stream.flush()
        with self._lock:
            self._last_line = line
        self._draw()
        if self._tty and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="progress-line", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            self._draw()

    def _draw(self) -> None:
        """Redraw the animated line (terminals only)."""
        if not (self.enabled and self._tty):
            return
        with self._lock:
            if not self._last_line or self._stop.is_set():
                return
            elapsed = int(time.monotonic() - self._start)
            stamp = f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
            self.stream.write(f"\r\x1b[K{next(self._frames)} {self._last_line}  {stamp}")
            self.stream.flush()

    def sleep(self, seconds: float) -> None:
        """Sleep between polls (the line keeps turning on its own)."""
        time.sleep(seconds)

    def close(self) -> None:
        """End the spinner's line."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
            self._ticker = None
        with self._lock:
            if self.enabled and self._tty and self._last_line:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
