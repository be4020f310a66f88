"""Per-task step timings: where a task's wall-clock time goes (logged at DEBUG per step, one summary per task)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

__all__ = ["StepTimes", "current_times", "in_task", "record", "step", "timing_task"]

log = logging.getLogger(__name__)

_local = threading.local()
P = ParamSpec("P")
R = TypeVar("R")


class StepTimes:
    """The seconds spent in each named step of one task, in the order the steps first ran."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.started = time.monotonic()
        self.steps: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        """Add seconds to a step (a step that runs twice is summed)."""
        self.steps[name] = self.steps.get(name, 0.0) + seconds

    def summary(self) -> str:
        """`step 0.012 s, ...; total 1.234 s` for a log line."""
        parts = ", ".join(f"{name} {seconds:.3f}" for name, seconds in self.steps.items())
        return f"{parts}; total {time.monotonic() - self.started:.3f} s"


def _current() -> StepTimes | None:
    """The timings of the task this thread works on, if any."""
    return getattr(_local, "times", None)


def current_times() -> StepTimes | None:
    """The timings of the task this thread works on (to hand to a helper thread), if any."""
    return _current()


def in_task(times: StepTimes | None, func: Callable[P, R]) -> Callable[P, R]:
    """func, recording its steps into times in whatever thread it runs."""

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        if times is None:
            return func(*args, **kwargs)
        with timing_task(times):
            return func(*args, **kwargs)

    return run


@contextlib.contextmanager
def timing_task(times: StepTimes) -> Iterator[StepTimes]:
    """Record the steps timed in this thread into times until the block ends."""
    previous = _current()
    _local.times = times
    try:
        yield times
    finally:
        _local.times = previous


def record(name: str, seconds: float) -> None:
    """Add seconds to a step of the current task (and log it at DEBUG)."""
    times = _current()
    if times is not None:
        times.add(name, seconds)
    log.debug("%s: %s took %.3f s", times.uid if times else "-", name, seconds)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Time a block as one step of the current task (a no-op outside a task apart from the DEBUG line)."""
    started = time.monotonic()
    try:
        yield
    finally:
        record(name, time.monotonic() - started)
