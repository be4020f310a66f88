"""Zip checks and extraction that a hostile or broken zip cannot get past.

A zip is checked from its central directory before it is accepted (`check_zip`), and extracted with the same limits
enforced on the bytes actually written (`safe_extract`), because the sizes in the directory can lie.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["UnsafeZipError", "ZipLimits", "ZipSummary", "check_zip", "safe_extract"]

_CHUNK = 1024 * 1024


class UnsafeZipError(ValueError):
    """The file is not a zip we accept; the message says why, in words a user understands."""


@dataclass(frozen=True)
class ZipLimits:
    """Limits against zip bombs: total uncompressed bytes, number of entries, compression ratio of any entry."""

    max_total_size: int = 64 * 1024**3
    max_files: int = 100_000
    max_ratio: float = 200.0


@dataclass(frozen=True)
class ZipSummary:
    """What a checked zip holds."""

    files: int
    total_size: int


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why an entry is unsafe to extract, or None."""
    name = info.filename
    if "\x00" in name:
        return f"entry name contains a NUL byte: {name!r}"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"entry has an absolute path: {name!r}"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        return f"entry escapes the archive with '..': {name!r}"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return f"entry is a symbolic link: {name!r}"
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return f"entry is not a regular file or folder: {name!r}"
    return None


def check_zip(path: Path | str, limits: ZipLimits) -> ZipSummary:
    """Check a zip's directory without extracting it; raise UnsafeZipError with a clear reason."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise UnsafeZipError(f"not a valid zip file (is it truncated?): {exc}") from exc
    except (OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise UnsafeZipError(f"not a valid zip file: {exc}") from exc
    if len(infos) > limits.max_files:
        raise UnsafeZipError(f"zip has {len(infos)} entries; the limit is {limits.max_files}")
    total = 0
    for info in infos:
        problem = _entry_problem(info)
        if problem:
            raise UnsafeZipError(problem)
        if info.flag_bits & 0x1:
            raise UnsafeZipError(f"entry is encrypted: {info.filename!r}")
        total += info.file_size
        if info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UnsafeZipError(
                f"entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}x; "
                f"the limit is {limits.max_ratio:.0f}x (zip bomb?)"
            )
    if total > limits.max_total_size:
        raise UnsafeZipError(f"zip expands to {total} bytes; the limit is {limits.max_total_size}")
    return ZipSummary(files=len(infos), total_size=total)


def safe_extract(path: Path | str, dest: Path | str, limits: ZipLimits) -> ZipSummary:
    """Extract a zip into dest, counting the bytes really written against the limits."""
    summary = check_zip(path, limits)
    root = Path(dest).resolve()
    root.mkdir(parents=True, exist_ok=True)
    written = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            target = (root / info.filename.replace("\\", "/")).resolve()
            if target != root and root not in target.parents:
                raise UnsafeZipError(f"entry escapes the archive: {info.filename!r}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > limits.max_total_size:
                            raise UnsafeZipError(
                                f"zip expands past {limits.max_total_size} bytes (its directory said less)"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise UnsafeZipError(f"corrupt zip entry {info.filename!r}: {exc}") from exc
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode | stat.S_IRUSR)
    return summary


def remove_tree(path: Path | str) -> None:
    """Remove a folder if it exists."""
    shutil.rmtree(path, ignore_errors=True)
