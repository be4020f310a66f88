"""Collect: the model's /output folder as a zip file, never following a link, bounded in size while it is written."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["OutputSummary", "OutputTooLarge", "folder_to_zip"]

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_MIN_ZIP_TIME = 315532800  # 1980-01-01, the earliest time a zip entry can hold


class OutputTooLarge(Exception):
    """The output zip grew past the model's max_output_size."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the output is larger than the model's max_output_size ({limit} bytes)")
        self.limit = limit


@dataclass
class OutputSummary:
    """What went into an output zip: counts, bytes, and what had to be left out."""

    files: int = 0
    folders: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """A file's mtime as a zip date_time (zip cannot hold times before 1980)."""
    return time.localtime(max(int(mtime), _MIN_ZIP_TIME))[:6]


class _Bounded:
    """Checks the size of the zip being written against a limit."""

    def __init__(self, archive: zipfile.ZipFile, limit: int | None) -> None:
        self.archive = archive
        self.limit = limit

    def check(self) -> None:
        """Raise OutputTooLarge once the zip file is past the limit."""
        if self.limit is not None and self.archive.fp is not None and self.archive.fp.tell() > self.limit:
            raise OutputTooLarge(self.limit)


def folder_to_zip(
    folder: Path,
    dest: Path,
    *,
    max_bytes: int | None = None,
    compresslevel: int = 1,
    exclude: frozenset[str] = frozenset(),
) -> OutputSummary:
    """Zip a folder's tree (empty folders and file modes kept); links and special files are left out and listed.

    `exclude`: paths relative to folder (e.g. the progress file `.progress`) that never go in.
    OutputTooLarge as soon as the zip passes max_bytes (dest is removed then).
    """
    summary = OutputSummary()
    try:
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive:
            bounded = _Bounded(archive, max_bytes)
            pending: list[tuple[str, str]] = [(str(folder), "")]
            while pending:
                directory, prefix = pending.pop()
                with os.scandir(directory) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name)
                for entry in entries:
                    name = prefix + entry.name
                    if name in exclude:
                        continue
                    info_stat = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(info_stat.st_mode):
                        info = zipfile.ZipInfo(name + "/", date_time=_zip_time(info_stat.st_mtime))
                        info.external_attr = ((stat.S_IFDIR | stat.S_IMODE(info_stat.st_mode)) << 16) | 0x10
                        archive.writestr(info, b"")
                        summary.folders += 1
                        pending.append((entry.path, name + "/"))
                    elif stat.S_ISREG(info_stat.st_mode) and _zip_file(archive, bounded, entry.path, name, summary):
                        summary.files += 1
                    else:
                        summary.skipped.append(name)
                    bounded.check()
        bounded.check()
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    if summary.skipped:
        log.warning("left out of the output zip (links or special files): %s", summary.skipped[:20])
    return summary


def _zip_file(archive: zipfile.ZipFile, bounded: _Bounded, path: str, name: str, summary: OutputSummary) -> bool:
    """Copy one regular file into the zip; False when it turned out not to be one (opened without following links)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it became a link since it was listed
            return False
        raise
    with os.fdopen(fd, "rb") as source:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return False
        info = zipfile.ZipInfo(name, date_time=_zip_time(opened.st_mtime))
        info.external_attr = (stat.S_IFREG | stat.S_IMODE(opened.st_mode)) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        # ZipInfo names its level `_compresslevel` before Python 3.13 and `compress_level` after.
        setattr(info, "compress_level" if hasattr(info, "compress_level") else "_compresslevel", 1)
        with archive.open(info, "w", force_zip64=True) as out:
            while block := source.read(_CHUNK):
                out.write(block)
                summary.bytes += len(block)
                bounded.check()
    return True
