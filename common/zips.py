"""One zip validator, used at upload (task and model zips) and before extraction by the consumer.

A zip is checked from its central directory before it is accepted (`check_zip`): every problem names the entry. It
is extracted with the same limits enforced on the bytes actually written (`safe_extract`), because the sizes in the
directory can lie. A failure to write (a full disk) is an `ExtractionFailed`, never an `UnsafeZipError`: it is the
host's problem, not the zip's.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ExtractionFailed",
    "UnsafeZipError",
    "ZipLimits",
    "ZipSettings",
    "ZipSummary",
    "check_zip",
    "safe_extract",
]

_CHUNK = 1024 * 1024
_RATIO_FLOOR = 1024 * 1024  # below this many bytes no ratio is suspicious
# What the consumer's zipfile can extract; Deflate64 (9, Windows Explorer's choice for large files) it cannot.
SUPPORTED_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
_METHOD_NAMES = {9: "Deflate64", 6: "implode", 93: "zstd", 95: "xz", 98: "PPMd", 99: "AES-encrypted"}


class UnsafeZipError(ValueError):
    """The file is not a zip we accept; the message says why (naming the entry), in words a user understands."""


class ExtractionFailed(OSError):
    """Extraction failed for a reason that is not the zip's (a full disk, a read error): worth a retry elsewhere."""


class ZipSettings(BaseSettings):
    """Limits against zip bombs and zips the consumer cannot extract (env MAX_ZIP_TOTAL_BYTES and the others)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    max_zip_total_bytes: int = Field(default=64 * 1024**3, gt=0)
    max_zip_files: int = Field(default=100_000, gt=0)
    max_zip_ratio: float = Field(default=200.0, gt=1)  # one entry's expansion
    # The whole archive's expansion: above what deflate can reach (about 1032x), so only bzip2/lzma bombs of many
    # small entries (each under the per-entry check's floor) meet it.
    max_zip_archive_ratio: float = Field(default=1100.0, gt=1)


# The name other modules know the limits by.
ZipLimits = ZipSettings


@dataclass(frozen=True)
class ZipSummary:
    """What a checked zip holds."""

    files: int
    total_size: int


# The longest file or folder name the usual file systems (ext4, xfs, NTFS in bytes of UTF-8) accept.
_MAX_NAME_BYTES = 255
# Errors reading a file that say nothing about its content.
_HOST_ERRNOS = (errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.EDQUOT)


def _name_parts(info: zipfile.ZipInfo) -> list[str]:
    """The path components of an entry's name (a folder's trailing slash dropped)."""
    parts = info.filename.replace("\\", "/").split("/")
    if info.is_dir() and len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return parts


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one entry is unsafe or cannot be extracted, or None."""
    name = info.filename
    if "\x00" in name:
        return f"entry name contains a NUL byte: {name!r}"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"entry has an absolute path: {name!r}"
    parts = _name_parts(info)
    if ".." in parts:
        return f"entry escapes the archive with '..': {name!r}"
    if "." in parts or "" in parts:
        return f"entry {name!r} has an empty or '.' name; zip the folder's contents, not the folder as '.'"
    if any(len(part.encode()) > _MAX_NAME_BYTES for part in parts):
        return f"entry {name[:80]!r}... has a name longer than {_MAX_NAME_BYTES} bytes, more than a file system takes"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return f"entry is a symbolic link: {name!r}"
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return f"entry is not a regular file or folder: {name!r}"
    if info.flag_bits & 0x1:
        return f"entry is encrypted: {name!r}"
    if info.compress_type not in SUPPORTED_METHODS:
        method = _METHOD_NAMES.get(info.compress_type, "unknown")
        return (
            f"entry {name!r} uses compression method {info.compress_type} ({method}), which is not supported; "
            f"use one of {', '.join(SUPPORTED_METHODS.values())}"
        )
    return None


def _tree_problem(infos: list[zipfile.ZipInfo]) -> str | None:
    """Duplicate names and a file that is also a folder (`a` and `a/b`), or None."""
    seen: set[tuple[str, bool]] = set()
    files: set[str] = set()
    folders: set[str] = set()
    for info in infos:
        parts = _name_parts(info)
        path = "/".join(parts)
        if (path, info.is_dir()) in seen:
            return f"entry {info.filename!r} appears twice in the zip"
        seen.add((path, info.is_dir()))
        (folders if info.is_dir() else files).add(path)
        folders.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    both = files & folders
    if both:
        return f"entry {min(both)!r} is both a file and a folder in the zip"
    return None


def check_zip(path: Path | str, limits: ZipSettings) -> ZipSummary:
    """Check a zip's directory without extracting it; raise UnsafeZipError with a clear reason."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
        archive_size = os.path.getsize(path)
    except zipfile.BadZipFile as exc:
        raise UnsafeZipError(f"not a valid zip file (is it truncated?): {exc}") from exc
    except OSError as exc:
        if exc.errno in _HOST_ERRNOS:  # reading the file failed: the host's problem, not the zip's
            raise ExtractionFailed(exc.errno, f"could not read the zip: {exc.strerror or exc}") from exc
        raise UnsafeZipError(f"not a valid zip file: {exc}") from exc  # e.g. a seek to a bad offset (EINVAL)
    except (EOFError, ValueError, NotImplementedError) as exc:
        raise UnsafeZipError(f"not a valid zip file: {exc}") from exc
    if len(infos) > limits.max_zip_files:
        raise UnsafeZipError(f"zip has {len(infos)} entries; the limit is {limits.max_zip_files}")
    total = 0
    for info in infos:
        problem = _entry_problem(info)
        if problem:
            raise UnsafeZipError(problem)
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _RATIO_FLOOR and ratio > limits.max_zip_ratio:
            raise UnsafeZipError(
                f"entry {info.filename!r} expands {ratio:.0f}x; the limit is {limits.max_zip_ratio:.0f}x (zip bomb?)"
            )
    problem = _tree_problem(infos)
    if problem:
        raise UnsafeZipError(problem)
    if total > limits.max_zip_total_bytes:
        raise UnsafeZipError(f"zip expands to {total} bytes; the limit is {limits.max_zip_total_bytes}")
    ratio = total / max(archive_size, 1)
    if total > _RATIO_FLOOR and ratio > limits.max_zip_archive_ratio:
        raise UnsafeZipError(
            f"the zip as a whole expands {ratio:.0f}x; the limit is {limits.max_zip_archive_ratio:.0f}x (zip bomb?)"
        )
    return ZipSummary(files=len(infos), total_size=total)


def _extract_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Write one file entry to target; its size. UnsafeZipError when the zip is at fault, ExtractionFailed else."""
    written = 0
    try:
        with archive.open(info) as src, open(target, "wb") as out:
            while True:
                try:
                    chunk = src.read(_CHUNK)
                except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
                    raise UnsafeZipError(f"corrupt zip entry {info.filename!r}: {exc}") from exc
                if not chunk:
                    return written
                written += len(chunk)
                if written > budget:
                    raise UnsafeZipError(f"entry {info.filename!r} expands past the zip's limit (its directory lied)")
                out.write(chunk)
    except (zipfile.BadZipFile, NotImplementedError) as exc:
        raise UnsafeZipError(f"corrupt zip entry {info.filename!r}: {exc}") from exc
    except UnsafeZipError:
        raise
    except OSError as exc:
        raise ExtractionFailed(exc.errno, f"could not write {info.filename!r}: {exc.strerror or exc}") from exc


def safe_extract(path: Path | str, dest: Path | str, limits: ZipSettings) -> ZipSummary:
    """Extract a zip into dest, counting the bytes really written against the limits."""
    summary = check_zip(path, limits)
    root = Path(dest).resolve()
    written = 0
    try:
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                target = (root / info.filename.replace("\\", "/")).resolve()
                if target != root and root not in target.parents:
                    raise UnsafeZipError(f"entry escapes the archive: {info.filename!r}")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written += _extract_entry(archive, info, target, limits.max_zip_total_bytes - written)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(target, mode | stat.S_IRUSR)
    except (UnsafeZipError, ExtractionFailed):
        raise
    except zipfile.BadZipFile as exc:
        raise UnsafeZipError(f"not a valid zip file: {exc}") from exc
    except OSError as exc:
        raise ExtractionFailed(exc.errno, f"could not extract the zip: {exc.strerror or exc}") from exc
    return summary


def remove_tree(path: Path | str) -> None:
    """Remove a folder if it exists."""
    shutil.rmtree(path, ignore_errors=True)
