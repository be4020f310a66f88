"""Waiting for a task: poll its status with backoff until it is final, riding out short network failures."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from inference_client.errors import ConnectionFailedError, TaskWaitTimeoutError
from inference_client.results import TaskStatus

__all__ = ["wait_until_final"]

# Polls in a row that may fail to connect before waiting gives up.
_CONNECTION_FAILURES = 5


def wait_until_final(
    uid: str,
    status: Callable[[str], TaskStatus],
    *,
    timeout: float | None,
    poll_initial: float,
    poll_max: float,
    on_status: Callable[[TaskStatus], None] | None,
    sleep: Callable[[float], None],
) -> TaskStatus:
    """Poll `status(uid)` until the task is finished, failed or cancelled; TaskWaitTimeoutError past `timeout`."""
    start = time.monotonic()
    delay = poll_initial
    connection_failures = 0
    last_state: str | None = None
    while True:
        try:
            current: TaskStatus | None = status(uid)
            connection_failures = 0
        except ConnectionFailedError:
            # A proxy restart or a network blip must not lose a task that runs for hours.
            connection_failures += 1
            if connection_failures > _CONNECTION_FAILURES:
                raise
            current = None
        if current is not None:
            if on_status:
                on_status(current)
            if current.is_final:
                return current
            if current.status != last_state:
                delay = poll_initial
                last_state = current.status
        elapsed = time.monotonic() - start
        if timeout is not None and elapsed >= timeout:
            raise TaskWaitTimeoutError(
                f"task {uid} still {last_state or 'unknown'} after {timeout:.0f} s", status_code=None
            )
        pause = min(delay, poll_max) * random.uniform(0.9, 1.1)
        if timeout is not None:
            pause = max(0.0, min(pause, timeout - elapsed))
        sleep(pause)
        delay = min(delay * 1.5, poll_max)
