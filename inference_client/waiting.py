"""Waiting for a task: long polls (`status?wait=S`) until it is final, riding out short network failures.

A server that answers at once with an unchanged status ignores `wait` (an older server): then the wait falls back
to plain polls with backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from inference_client.errors import ConnectionFailedError, TaskWaitTimeoutError
from inference_client.results import TaskStatus

__all__ = ["MAX_WAIT_SECONDS", "wait_until_final"]

# Polls in a row that may fail to connect before waiting gives up.
_CONNECTION_FAILURES = 5
# The longest `wait` the server takes.
MAX_WAIT_SECONDS = 60.0
# A long poll shorter than this is not worth sending: the remaining time is spent in one plain poll.
_MIN_WAIT = 1.0

StatusCall = Callable[[str, float | None], TaskStatus]


def _seen(status: TaskStatus) -> tuple[object, ...]:
    """What the server wakes a long poll for."""
    return (status.status, status.phase, status.progress, status.progress_message)


def wait_until_final(
    uid: str,
    status: StatusCall,
    *,
    timeout: float | None,
    poll_initial: float,
    poll_max: float,
    on_status: Callable[[TaskStatus], None] | None,
    sleep: Callable[[float], None],
    long_poll: bool = True,
) -> TaskStatus:
    """Follow `status(uid, wait)` until the task is finished, failed or cancelled; TaskWaitTimeoutError past timeout.

    `status(uid, None)` is a plain poll, `status(uid, S)` a long poll of up to S seconds.
    """
    start = time.monotonic()
    delay = poll_initial
    connection_failures = 0
    last: tuple[object, ...] | None = None
    while True:
        elapsed = time.monotonic() - start
        left = None if timeout is None else timeout - elapsed
        wait = None
        if long_poll and last is not None:
            wait = MAX_WAIT_SECONDS if left is None else min(MAX_WAIT_SECONDS, left)
            wait = wait if wait >= _MIN_WAIT else None
        asked = time.monotonic()
        try:
            current: TaskStatus | None = status(uid, wait)
            connection_failures = 0
        except ConnectionFailedError:
            # A proxy restart or a network blip must not lose a task that runs for hours.
            connection_failures += 1
            if connection_failures > _CONNECTION_FAILURES:
                raise
            current = None
        pause = 0.0
        if current is not None:
            if on_status:
                on_status(current)
            if current.is_final:
                return current
            seen = _seen(current)
            changed = seen != last
            if wait is not None and not changed and time.monotonic() - asked < wait / 2:
                long_poll = False  # an unchanged answer well before `wait`: the server ignores it
            if changed:
                delay = poll_initial
            last = seen
            if wait is None or not long_poll:
                pause = 0.0 if long_poll and changed else delay
        else:
            pause = delay
        elapsed = time.monotonic() - start
        if timeout is not None and elapsed >= timeout:
            state = current.status if current is not None else "unknown"
            raise TaskWaitTimeoutError(f"task {uid} still {state} after {timeout:.0f} s", status_code=None)
        if pause <= 0:
            continue
        pause = min(pause, poll_max) * random.uniform(0.9, 1.1)
        if timeout is not None:
            pause = max(0.0, min(pause, timeout - elapsed))
        sleep(pause)
        delay = min(delay * 1.5, poll_max)
