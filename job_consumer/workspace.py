"""Provision and clean up on disk: each task's folders and the models' content, all under WORK_DIR.

WORK_DIR/tasks/<scope>/<instance>/<uid>-<attempt>/{input,output} are the task's /input and /output (bind-mounted);
WORK_DIR/models/<model>-<sha256[:16]>/ is a model's /model, filled once per host under an exclusive flock of its lock
file and held with a shared one by every task that mounts it (so it is never removed under a running model).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.zips import UnsafeZipError, ZipSettings, safe_extract
from job_consumer.errors import DiskFull, ModelFailed, RetryLater
from job_consumer.schemas import ModelInfo

__all__ = ["TaskDirs", "Workspace", "remove_tree"]

log = logging.getLogger(__name__)

_OLD_VERSION = re.compile(r"^[0-9a-f]{16}$")


def _path_safe(text: str) -> str:
    """text with every character but letters, digits, `.`, `_` and `-` replaced, for a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def remove_tree(path: Path) -> None:
    """Remove a folder, making read-only folders in it writable first; what cannot go is logged."""
    if not path.exists():
        return
    for directory, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("could not remove all of %s", path)


def _readable_by_all(root: Path) -> None:
    """Models may run as any user: what they read must be readable (and folders enterable) by all."""
    for directory, dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | 0o444)
        for name in dirs:
            os.chmod(os.path.join(directory, name), 0o755)
    root.chmod(0o755)


def _extract(zip_path: Path, dest: Path, limits: ZipSettings, what: str) -> None:
    """Extract safely; a bad zip is the user's (ModelFailed), a disk or write error the host's (retried)."""
    try:
        safe_extract(zip_path, dest, limits)
    except UnsafeZipError as exc:
        raise ModelFailed(f"{what} was rejected: {exc}") from exc
    except OSError as exc:  # ExtractionFailed included: nothing about the zip
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"no space left in WORK_DIR while extracting {what}") from exc
        raise RetryLater(f"could not extract {what}: {exc}") from exc


@dataclass(frozen=True)
class TaskDirs:
    """One attempt's folders: what the model sees as /input and /output, and the consumer's files beside them."""

    root: Path

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def input_zip(self) -> Path:
        return self.root / "input.zip"

    @property
    def output_zip(self) -> Path:
        return self.root / "output.zip"


class Workspace:
    """The consumer's folders under WORK_DIR."""

    def __init__(
        self,
        work_dir: Path,
        *,
        instance_id: str,
        scope: str = "default",
        zip_limits: ZipSettings | None = None,
        min_free_bytes: int = 0,
        fill_timeout: float = 3600.0,
    ) -> None:
        self.work_dir = work_dir
        self.instance_id = instance_id
        self.zip_limits = zip_limits or ZipSettings()
        self.min_free_bytes = min_free_bytes
        self.fill_timeout = fill_timeout
        # Per deployment (scope): the orphan reaper asks only its own private API about the folders it finds.
        self.tasks_root = work_dir / "tasks" / _path_safe(scope)
        self.models_root = work_dir / "models"
        self.own_root = self.tasks_root / _path_safe(instance_id)
        # Old versions' content a claim found unneeded while a task still held it: removed once the hold goes.
        self._deferred: set[str] = set()
        self._deferred_lock = threading.Lock()

    # ---- disk --------------------------------------------------------------------------------------------

    def free_bytes(self) -> int | None:
        """Free bytes on WORK_DIR's file system (None when it cannot be read)."""
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            usage = shutil.disk_usage(self.work_dir)
        except OSError:
            return None
        return usage.free

    def check_free_space(self) -> None:
        """DiskFull when WORK_DIR has less than MIN_FREE_DISK_BYTES free."""
        free = self.free_bytes()
        if free is not None and free < self.min_free_bytes:
            raise DiskFull(
                f"WORK_DIR {self.work_dir} has {free} bytes free, below MIN_FREE_DISK_BYTES ({self.min_free_bytes})"
            )

    # ---- tasks -------------------------------------------------------------------------------------------

    def task_dirs(self, uid: str, attempt: int) -> TaskDirs:
        """Make the attempt's empty /input and /output folders (the model may write /output as any user)."""
        dirs = TaskDirs(self.own_root / f"{_path_safe(uid)}-{attempt}")
        remove_tree(dirs.root)
        try:
            dirs.input.mkdir(parents=True)
            dirs.output.mkdir()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"no space left in WORK_DIR {self.work_dir}") from exc
            raise
        dirs.output.chmod(0o1777)
        return dirs

    def extract_input(self, dirs: TaskDirs) -> None:
        """Extract the downloaded input zip into /input (readable by any user), then drop the zip."""
        _extract(dirs.input_zip, dirs.input, self.zip_limits, "the input zip")
        _readable_by_all(dirs.input)
        dirs.input_zip.unlink(missing_ok=True)

    def remove_task(self, dirs: TaskDirs) -> None:
        """Remove the attempt's folders."""
        remove_tree(dirs.root)

    def close(self) -> None:
        """At a clean exit: remove this instance's (by then empty) folder."""
        with contextlib.suppress(OSError):
            self.own_root.rmdir()

    def task_folders_of_others(self) -> Iterator[tuple[str, str, int, Path]]:
        """(instance, uid, attempt, folder) of task folders other consumer instances left under WORK_DIR."""
        if not self.tasks_root.is_dir():
            return
        for instance_dir in self.tasks_root.iterdir():
            if instance_dir == self.own_root or not instance_dir.is_dir():
                continue
            for folder in instance_dir.iterdir():
                uid, _, attempt = folder.name.rpartition("-")
                if uid and attempt.isdigit():
                    yield instance_dir.name, uid, int(attempt), folder

    # ---- model content -----------------------------------------------------------------------------------

    def _lock(self, key: str, mode: int, *, wait: bool = True) -> IO[str] | None:
        """The model's lock file, flock'ed with mode; None when not waiting and it is taken; RetryLater on timeout."""
        self.models_root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.fill_timeout
        handle = open(self.models_root / f".{key}.lock", "a")  # noqa: SIM115 - returned to the caller
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if not wait or time.monotonic() > deadline:
                    handle.close()
                    if not wait:
                        return None
                    raise RetryLater(f"gave up waiting for another consumer to fill the content of {key}") from None
                time.sleep(0.5)

    @contextlib.contextmanager
    def _fill_lock(self, key: str) -> Iterator[None]:
        """Hold the model's fill lock (exclusive, shared by every consumer on this host)."""
        handle = self._lock(key, fcntl.LOCK_EX)
        assert handle is not None
        with handle:
            yield

    def hold_model(self, model: ModelInfo) -> IO[str] | None:
        """A shared lock on the model's content for as long as a task mounts it (close the handle to let go)."""
        return self._lock(model.content_key, fcntl.LOCK_SH) if model.content_key else None

    def model_dir(self, model: ModelInfo, fetch_zip: Callable[[Path], object]) -> Path | None:
        """The folder mounted read-only at /model for this model's zip, filled once per host; None without a zip.

        A fill goes into a staging folder renamed into place when complete, so a folder that exists is complete and
        a fill cut half-way is redone by the next consumer that takes the lock.
        """
        key = model.content_key
        if key is None:
            return None
        final = self.models_root / key
        if final.is_dir():
            return final
        with self._fill_lock(key):
            if final.is_dir():
                return final
            for stale in self.models_root.glob(f".fill-{key}-*"):
                remove_tree(stale)
            staging = self.models_root / f".fill-{key}-{secrets.token_hex(4)}"
            staging.mkdir()
            try:
                fetch_zip(staging / "model.zip")
                _extract(staging / "model.zip", staging / "content", self.zip_limits, "the model's zip")
                _readable_by_all(staging / "content")
                os.rename(staging / "content", final)
            finally:
                remove_tree(staging)
        log.info("model content %s is ready", key)
        return final

    def old_model_versions(self, model: ModelInfo, *, keep: Iterable[str] = ()) -> list[tuple[str, Path]]:
        """(content key, folder) of this model's content for zips other than this task's and those in `keep`
        (sha256s of versions other tasks still need: the private API names them in the claim)."""
        if not self.models_root.is_dir():
            return []
        prefix = f"{model.human_readable_id}-"
        kept = {sha[:16] for sha in keep}
        return [
            (folder.name, folder)
            for folder in self.models_root.iterdir()
            if folder.name.startswith(prefix)
            and folder.name != model.content_key
            and _OLD_VERSION.match(folder.name[len(prefix) :])
            and folder.name[len(prefix) :] not in kept
            and folder.is_dir()
        ]

    def remove_deferred_versions(self) -> None:
        """Retry the removals of old versions' content that a task's hold put off (called when a hold goes)."""
        with self._deferred_lock:
            keys = sorted(self._deferred)
        for key in keys:
            self.remove_model_version(key)

    def remove_model_version(self, key: str) -> bool:
        """Remove one content folder unless a task holds it (its shared lock); True when it went."""
        handle = self._lock(key, fcntl.LOCK_EX, wait=False)
        if handle is None:
            log.info("kept the content %s for now: a task still uses it", key)
            with self._deferred_lock:
                self._deferred.add(key)
            return False
        with handle:
            remove_tree(self.models_root / key)
        with self._deferred_lock:
            self._deferred.discard(key)
        log.info("removed the content %s (an older version)", key)
        return True
