"""Waiting without polling: one watcher per process re-reads every watched task in one short query.

A waiting request (`GET /api/tasks/{uid}/status?wait=S`) holds neither a database connection nor a thread: it parks a
future here and is answered when the task's status, phase or progress differs from what it last saw. The watcher
reads all watched uids in one query about every `interval` seconds, and at once when a route of this process pokes
it after it changed a task (finish, heartbeat, release, claim, cancel); other processes' changes are seen on the
next tick. The query takes one pooled connection for a moment, in a worker thread, whatever the number of waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, select

from private_api.orm import Task

__all__ = ["GONE", "Fingerprint", "Watcher", "fingerprint"]

log = logging.getLogger(__name__)

# (status, phase, progress, progress_message, deleted): what a waiter is woken for when it changes.
Fingerprint = tuple[Any, ...]
# What a task that no longer exists looks like (waiters of a removed task are answered, with 554).
GONE: Fingerprint = ("gone",)
# Uids per query: well below every database's limit on bound parameters.
_CHUNK = 500


def fingerprint(task: Any) -> Fingerprint:
    """What a waiter compares: a Task or a row with status, phase, progress, progress_message and deleted."""
    return (task.status, task.phase, task.progress, task.progress_message, bool(task.deleted))


# Seconds at least between two reads: a burst of commits costs a few reads, not one each.
_MIN_GAP = 0.05


class Watcher:
    """Parks waiters per task uid and wakes them when their task changed (see the module docstring)."""

    def __init__(self, engine: Engine, *, interval: float = 0.5) -> None:
        self.engine = engine
        self.interval = interval
        self._waiters: dict[str, list[tuple[Fingerprint, asyncio.Future[None]]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poked: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """How many requests wait now."""
        return sum(len(parked) for parked in self._waiters.values())

    def start(self) -> None:
        """Start the watching loop on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._poked = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="task-watcher")

    async def stop(self) -> None:
        """Stop the loop; parked waiters are answered (their route reads the status once more)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for parked in self._waiters.values():
            for _, future in parked:
                if not future.done():
                    future.set_result(None)
        self._waiters.clear()

    def poke(self) -> None:
        """Look at the watched tasks now (safe to call from any thread; a no-op before start or without waiters)."""
        if self._loop is None or self._poked is None or not self._waiters:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the app is shutting down
            self._loop.call_soon_threadsafe(self._poked.set)

    async def wait(self, uid: str, seen: Fingerprint, timeout: float) -> bool:
        """Wait until task uid no longer looks like `seen`, at most timeout seconds; True when it changed."""
        if self._loop is None:
            raise RuntimeError("the watcher is not started")
        future: asyncio.Future[None] = self._loop.create_future()
        entry = (seen, future)
        self._waiters.setdefault(uid, []).append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            parked = self._waiters.get(uid)
            if parked is not None:
                with contextlib.suppress(ValueError):
                    parked.remove(entry)
                if not parked:
                    del self._waiters[uid]

    async def _run(self) -> None:
        assert self._poked is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.interval)
            self._poked.clear()
            if not self._waiters:
                continue
            try:
                await self.check()
            except Exception:  # a database hiccup: the waiters keep waiting, the next tick tries again
                log.warning("watching tasks failed; trying again", exc_info=True)
            await asyncio.sleep(_MIN_GAP)

    async def check(self) -> None:
        """Read every watched task once and wake the waiters whose task changed."""
        uids = list(self._waiters)
        current = await asyncio.to_thread(self._read, uids)
        for uid in uids:
            now = current.get(uid, GONE)
            for seen, future in self._waiters.get(uid, []):
                if now != seen and not future.done():
                    future.set_result(None)

    def _read(self, uids: Iterable[str]) -> dict[str, Fingerprint]:
        """The fingerprint of each existing task among uids (one query per 500 uids, one short connection)."""
        found: dict[str, Fingerprint] = {}
        wanted = list(uids)
        columns = (Task.uid, Task.status, Task.phase, Task.progress, Task.progress_message, Task.deleted)
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                for row in connection.execute(select(*columns).where(Task.uid.in_(chunk))):
                    found[row.uid] = fingerprint(row)
        return found
