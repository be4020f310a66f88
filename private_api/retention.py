"""Retention: the sweeper thread that removes input and output zips past their time, and files nobody may keep.

Each round (every RETENTION_INTERVAL_SECONDS)
- removes the input zip of every task that ended INPUT_RETENTION_SECONDS ago or more (0: at the first round after
  its end) and sets tasks.input_removed_at;
- removes the output zip and the log of every task that ended OUTPUT_RETENTION_SECONDS ago or more and sets
  tasks.output_expired_at (its poll answers 553 "expired" from its deadline on, swept or not);
- looks at every file under inputs/, outputs/ and logs/ and removes those no task may keep: of a deleted task (a late
  upload of a consumer that had not yet heard of the delete), of a task whose file was already swept, a staged output
  of a task that ended STAGED_GRACE ago (a holder's upload that lost), or of no task at all (after ORPHAN_GRACE, so a
  task being stored right now keeps its input).

A column is set only once its file is gone (removed now, or already absent), so a disk that refuses the removal
leaves the task due for the next round. Every removal tolerates a file already gone and every mark is a
compare-and-set on NULL: any number of private API instances may sweep the same DATA_DIR and database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from common.schemas import FINAL_STATES
from common.settings import valid_uid
from private_api import model_zips
from private_api.config import Settings
from private_api.orm import Task, utcnow
from private_api.storage import Storage

__all__ = [
    "ORPHAN_GRACE",
    "STAGED_GRACE",
    "Retention",
    "SweepResult",
    "Sweeper",
    "expired_at",
    "expires_at",
    "retention_of",
]

log = logging.getLogger(__name__)

_BATCH = 500
# A file whose task row does not exist is removed only this long after it was written (the input lands before its
# row is committed).
ORPHAN_GRACE = timedelta(hours=1)
# A holder's staged output lands just after its finish is committed: one of an ended task goes only this long after.
STAGED_GRACE = timedelta(minutes=1)
_FOLDERS = {"inputs": (".zip",), "outputs": (".zip", ".staged"), "logs": (".log",)}


@dataclass(frozen=True)
class Retention:
    """How long files are kept after a task ends."""

    input_seconds: float = 0.0
    output_seconds: float = 30 * 24 * 3600.0

    @property
    def output(self) -> timedelta:
        """OUTPUT_RETENTION_SECONDS as a timedelta."""
        return timedelta(seconds=self.output_seconds)

    @property
    def input(self) -> timedelta:
        """INPUT_RETENTION_SECONDS as a timedelta."""
        return timedelta(seconds=self.input_seconds)


def retention_of(settings: Settings) -> Retention:
    """The retention the settings ask for."""
    return Retention(input_seconds=settings.input_retention_seconds, output_seconds=settings.output_retention_seconds)


def expires_at(
    *, status: str, finished_at: datetime | None, output_expired_at: datetime | None, retention: Retention
) -> datetime | None:
    """When the output and log of an ended task go (or went); None while it has not ended.

    The deadline, finished_at + OUTPUT_RETENTION_SECONDS, or the moment the sweeper removed them if that came first
    (a retention made longer later does not bring them back).
    """
    if status not in FINAL_STATES or finished_at is None:
        return output_expired_at
    deadline = finished_at + retention.output
    return deadline if output_expired_at is None else min(deadline, output_expired_at)


def expired_at(
    *,
    status: str,
    finished_at: datetime | None,
    output_expired_at: datetime | None,
    retention: Retention,
    now: datetime | None = None,
) -> datetime | None:
    """When the output of an ended task expired, or None while it is still kept."""
    deadline = expires_at(
        status=status, finished_at=finished_at, output_expired_at=output_expired_at, retention=retention
    )
    if deadline is None or (output_expired_at is None and deadline > (now or utcnow())):
        return None
    return deadline


@dataclass
class SweepResult:
    """What one round did."""

    inputs_removed: int = 0
    outputs_expired: int = 0
    files_removed: int = 0
    failures: list[str] = field(default_factory=list)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Sweeper:
    """The retention loop: one background thread, one round every `interval` seconds."""

    def __init__(
        self, *, sessions: sessionmaker[Session], storage: Storage, retention: Retention, interval: float
    ) -> None:
        self.sessions = sessions
        self.storage = storage
        self.retention = retention
        self.interval = interval
        self.last_error: str | None = None
        self.rounds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._run, name="retention-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a round under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()

    def sweep(self) -> SweepResult:
        """One round; every error is logged and kept in last_error, never raised (the next round tries again)."""
        result = SweepResult()
        for step in (self._expire_inputs, self._expire_outputs, self._remove_unkept, self._prune_model_zips):
            try:
                step(result)
            except Exception as exc:  # the database is away, or the disk: the next round tries again
                result.failures.append(f"{type(exc).__name__}: {exc}")
        self.rounds += 1
        self.last_error = "; ".join(result.failures[:5]) or None
        if result.failures:
            log.warning("retention: %d problem(s), e.g. %s", len(result.failures), result.failures[0])
        if result.inputs_removed or result.outputs_expired or result.files_removed:
            log.info(
                "retention: %d input(s) removed, %d output(s) expired, %d leftover file(s) removed",
                result.inputs_removed,
                result.outputs_expired,
                result.files_removed,
            )
        return result

    def _prune_model_zips(self, result: SweepResult) -> None:
        """Zips of model versions no task needs any more, and of deleted models (missed at their change)."""
        result.files_removed += model_zips.prune_all(self.sessions, self.storage)

    def _unlink(self, path: Path, result: SweepResult) -> bool:
        """Remove a file; True when it is gone (also when it was gone already)."""
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            result.failures.append(f"cannot remove {path}: {exc.strerror or exc}")
            return False
        return True

    def _due(self, session: Session, column: Any, cutoff: datetime) -> list[tuple[int, str]]:
        query = (
            select(Task.id, Task.uid)
            .where(column.is_(None), Task.finished_at <= cutoff, Task.status.in_(FINAL_STATES))
            .order_by(Task.finished_at)
            .limit(_BATCH)
        )
        return [(row.id, row.uid) for row in session.execute(query)]

    def _expire(self, column: Any, cutoff: datetime, paths: Any, result: SweepResult) -> int:
        """Remove the files of the due tasks, then mark those whose files are gone; how many were marked."""
        marked = 0
        while True:
            with self.sessions() as session:
                due = self._due(session, column, cutoff)
                gone = [task_id for task_id, uid in due if all([self._unlink(p, result) for p in paths(uid)])]
                if gone:
                    done = session.execute(
                        update(Task)
                        .where(Task.id.in_(gone), column.is_(None))
                        .values({column.key: utcnow()})
                        .execution_options(synchronize_session=False)
                    )
                    session.commit()
                    marked += int(getattr(done, "rowcount", 0) or 0)
            if len(due) < _BATCH or len(gone) < len(due):  # a full batch that stuck would come back forever
                return marked

    def _expire_inputs(self, result: SweepResult) -> None:
        cutoff = utcnow() - self.retention.input
        result.inputs_removed += self._expire(
            Task.input_removed_at, cutoff, lambda uid: [self.storage.input_path(uid)], result
        )

    def _expire_outputs(self, result: SweepResult) -> None:
        cutoff = utcnow() - self.retention.output
        result.outputs_expired += self._expire(
            Task.output_expired_at,
            cutoff,
            lambda uid: [self.storage.output_path(uid), self.storage.log_path(uid)],
            result,
        )

    def _files_on_disk(self) -> dict[str, list[Path]]:
        """Every task file under DATA_DIR, by uid."""
        found: dict[str, list[Path]] = {}
        for folder, suffixes in _FOLDERS.items():
            for path in (self.storage.root / folder).iterdir():
                uid = path.name.split(".", 1)[0]  # `uid.zip`, `uid.log`, `uid.<attempt>-<holder>.staged`
                if path.name.endswith(suffixes) and valid_uid(uid):
                    found.setdefault(uid, []).append(path)
        return found

    def _unkept(self, rows: dict[str, Any], uid: str, path: Path, now: datetime) -> bool:
        """True when no task may keep this file."""
        row = rows.get(uid)
        if row is None:
            try:
                written = datetime.fromtimestamp(path.stat().st_mtime, tz=now.tzinfo)
            except FileNotFoundError:
                return False
            return now - written > ORPHAN_GRACE
        if row.deleted:
            return True
        if path.name.endswith(".staged"):
            ended = row.status in FINAL_STATES and row.finished_at is not None
            return ended and now - row.finished_at > STAGED_GRACE
        if path.parent.name == "inputs":
            return row.input_removed_at is not None
        return row.output_expired_at is not None

    def _remove_unkept(self, result: SweepResult) -> None:
        """Remove files of deleted tasks, of tasks already swept, staged outputs that lost, and files of no task."""
        files = self._files_on_disk()
        now = utcnow()
        for uids in _chunks(sorted(files), _BATCH):
            with self.sessions() as session:
                columns = (Task.deleted, Task.status, Task.finished_at, Task.input_removed_at, Task.output_expired_at)
                query = select(Task.uid, *columns).where(Task.uid.in_(uids))
                rows = {row.uid: row for row in session.execute(query)}
            for uid in uids:
                for path in files[uid]:
                    if self._unkept(rows, uid, path, now) and path.exists() and self._unlink(path, result):
                        result.files_removed += 1
