"""Terminal feedback for the CLI: byte progress bars and a spinner showing a task's state while waiting."""

from __future__ import annotations

import itertools
import sys
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
    """Shows a task's state while waiting: an animated line on a terminal, one line per change otherwise."""

    _FRAMES = "|/-\\"

    def __init__(self, uid: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.uid = uid
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._frames = itertools.cycle(self._FRAMES)
        self._start = time.monotonic()
        self._last_line = ""

    def describe(self, status: TaskStatus) -> str:
        """One line about where the task stands."""
        text = f"task {self.uid}: {status.status}"
        if status.status == "pending" and status.queue_position is not None:
            text += f" (queue position {status.queue_position})"
        if status.attempt and status.attempt > 1:
            text += f" (attempt {status.attempt})"
        return text

    def __call__(self, status: TaskStatus) -> None:
        """Report a fresh status."""
        if not self.enabled:
            return
        line = self.describe(status)
        if not self._tty and line != self._last_line:
            self.stream.write(line + "\n")
            self.stream.flush()
        self._last_line = line
        self._draw()

    def _draw(self) -> None:
        """Redraw the animated line (terminals only)."""
        if not (self.enabled and self._tty and self._last_line):
            return
        elapsed = int(time.monotonic() - self._start)
        stamp = f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}"
        self.stream.write(f"\r\x1b[K{next(self._frames)} {self._last_line}  {stamp}")
        self.stream.flush()

    def sleep(self, seconds: float) -> None:
        """Sleep between polls while keeping the spinner turning."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))
            self._draw()

    def close(self) -> None:
        """End the spinner's line."""
        if self.enabled and self._tty and self._last_line:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
