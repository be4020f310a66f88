"""Streaming conversions between a folder, a tar stream and a zip file, with bounded memory."""

from __future__ import annotations

import errno
import io
import logging
import os
import queue
import stat
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["OutputSummary", "folder_as_tar", "folder_to_zip", "tar_to_zip"]

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_MIN_ZIP_TIME = 315532800  # 1980-01-01, the earliest time a zip entry can hold


class _QueueWriter(io.RawIOBase):
    """A write-only file whose writes become chunks in a bounded queue (the producer side of a stream)."""

    def __init__(self, chunks: queue.Queue[bytes | None], closed_by_reader: threading.Event) -> None:
        self._chunks = chunks
        self._reader_gone = closed_by_reader

    def writable(self) -> bool:
        """It is writable."""
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Queue a copy of data, waiting while the reader is behind; fail once the reader has given up."""
        payload = bytes(data)
        while True:
            if self._reader_gone.is_set():
                raise BrokenPipeError("the reader of the tar stream went away")
            try:
                self._chunks.put(payload, timeout=0.5)
                return len(payload)
            except queue.Full:
                continue


def folder_as_tar(folder: Path, *, arc_root: str, extra_dirs: dict[str, int] | None = None) -> Iterator[bytes]:
    """Yield a tar of folder's contents under `arc_root/`, owned by root and readable by anyone, in chunks.

    `extra_dirs` adds empty top-level folders with the given modes (e.g. a writable `output/`).
    """
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
    reader_gone = threading.Event()
    failure: list[BaseException] = []

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        # Models may run as any user: make what they read readable (and folders enterable) by all.
        info.mode |= 0o555 if info.isdir() else 0o444
        return info

    def produce() -> None:
        try:
            raw: Any = _QueueWriter(chunks, reader_gone)
            writer = io.BufferedWriter(raw, buffer_size=_CHUNK)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.add(str(folder), arcname=arc_root, recursive=True, filter=normalise)
                for name, mode in (extra_dirs or {}).items():
                    info = tarfile.TarInfo(name)
                    info.type = tarfile.DIRTYPE
                    info.mode = mode
                    info.mtime = int(time.time())
                    tar.addfile(info)
            writer.flush()
        except BaseException as exc:  # handed to the consumer of the stream
            failure.append(exc)
        finally:
            while True:
                try:
                    chunks.put(None, timeout=0.5)
                    break
                except queue.Full:
                    if reader_gone.is_set():
                        break

    thread = threading.Thread(target=produce, name="tar-producer", daemon=True)
    thread.start()
    try:
        while (chunk := chunks.get()) is not None:
            yield chunk
    finally:
        reader_gone.set()
        thread.join()
    if failure:
        raise failure[0]


class _IterReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (the docker SDK's archive stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        """It is readable."""
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill buffer from the next chunk(s); 0 at the end."""
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class OutputSummary:
    """What went into an output zip: counts, bytes, and what had to be left out."""

    def __init__(self) -> None:
        self.files = 0
        self.folders = 0
        self.bytes = 0
        self.skipped: list[str] = []


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """A tar mtime as a zip date_time (zip cannot hold times before 1980)."""
    return time.localtime(max(int(mtime), _MIN_ZIP_TIME))[:6]


def tar_to_zip(chunks: Iterable[bytes], dest: Path, *, strip: str, compresslevel: int = 1) -> OutputSummary:
    """Convert a tar stream (whose entries start with `strip/`) into a zip file at dest, chunk by chunk.

    Folders (empty ones too) and file modes are kept; links and special files are left out and listed.
    """
    summary = OutputSummary()
    prefix = strip.strip("/") + "/"
    reader = io.BufferedReader(_IterReader(chunks), buffer_size=_CHUNK)
    with (
        tarfile.open(fileobj=reader, mode="r|") as tar,
        zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive,
    ):
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if name.rstrip("/") == strip.strip("/"):
                continue
            if not name.startswith(prefix):
                summary.skipped.append(name)
                continue
            name = name[len(prefix) :].rstrip("/")
            if not name:
                continue
            if member.isdir():
                info = zipfile.ZipInfo(name + "/", date_time=_zip_time(member.mtime))
                info.external_attr = ((stat.S_IFDIR | (member.mode & 0o7777)) << 16) | 0x10
                archive.writestr(info, b"")
                summary.folders += 1
            elif member.isreg():
                info = zipfile.ZipInfo(name, date_time=_zip_time(member.mtime))
                info.external_attr = (stat.S_IFREG | (member.mode & 0o7777)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                # ZipInfo names its level `_compresslevel` before Python 3.13 and `compress_level` after.
                setattr(info, "compress_level" if hasattr(info, "compress_level") else "_compresslevel", compresslevel)
                source = tar.extractfile(member)
                if source is None:
                    summary.skipped.append(name)
                    continue
                with archive.open(info, "w", force_zip64=True) as out:
                    while block := source.read(_CHUNK):
                        out.write(block)
                summary.files += 1
                summary.bytes += member.size
            else:
                summary.skipped.append(name)
    if summary.skipped:
        log.warning("left out of the output zip (links or special files): %s", summary.skipped[:20])
    return summary


def folder_to_zip(folder: Path, dest: Path, *, compresslevel: int = 1) -> OutputSummary:
    """Zip a folder's tree the way tar_to_zip zips an archive of it, never following a link.

    Folders (empty ones too) and file modes are kept; links and special files are left out and listed.
    PermissionError when a file cannot be read (the caller may fall back to reading it through the engine).
    """
    summary = OutputSummary()
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive:
        pending: list[tuple[str, str]] = [(str(folder), "")]
        while pending:
            directory, prefix = pending.pop()
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
            for entry in entries:
                name = prefix + entry.name
                info_stat = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info_stat.st_mode):
                    info = zipfile.ZipInfo(name + "/", date_time=_zip_time(info_stat.st_mtime))
                    info.external_attr = ((stat.S_IFDIR | stat.S_IMODE(info_stat.st_mode)) << 16) | 0x10
                    archive.writestr(info, b"")
                    summary.folders += 1
                    pending.append((entry.path, name + "/"))
                elif stat.S_ISREG(info_stat.st_mode):
                    if _zip_regular_file(archive, entry.path, name, compresslevel, summary):
                        summary.files += 1
                    else:
                        summary.skipped.append(name)
                else:
                    summary.skipped.append(name)
    if summary.skipped:
        log.warning("left out of the output zip (links or special files): %s", summary.skipped[:20])
    return summary


def _zip_regular_file(
    archive: zipfile.ZipFile, path: str, name: str, compresslevel: int, summary: OutputSummary
) -> bool:
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
        setattr(info, "compress_level" if hasattr(info, "compress_level") else "_compresslevel", compresslevel)
        with archive.open(info, "w", force_zip64=True) as out:
            while block := source.read(_CHUNK):
                out.write(block)
                summary.bytes += len(block)
    return True
