"""Request bodies streamed from disk: a folder zipped on the fly, or a zip file, wrapped as multipart."""

from __future__ import annotations

import os
import secrets
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from inference_client.errors import BadRequestError

__all__ = [
    "Body",
    "InputSource",
    "ProgressCallback",
    "bytes_body",
    "fileobj_body",
    "folder_body",
    "folder_size",
    "input_body",
    "model_zip_body",
    "zip_file_body",
]

InputSource = str | os.PathLike[str] | bytes | BinaryIO
"""A task input: a folder (zipped on the fly), a zip file's path, zip bytes, or an open binary file."""

ProgressCallback = Callable[[int], None]
"""Called with the number of source bytes just consumed."""

_CHUNK = 1024 * 1024
# Already-compressed formats gain nothing from deflate; storing them saves CPU on multi-GB inputs.
_STORED_SUFFIXES = {
    ".gz",
    ".zip",
    ".npz",
    ".png",
    ".jpg",
    ".jpeg",
    ".bz2",
    ".xz",
    ".zst",
    ".7z",
    ".mp4",
    ".pt",
}


@dataclass
class Body:
    """A multipart body ready for httpx: headers plus a fresh chunk iterator per call of `chunks`."""

    content_type: str
    length: int | None
    total_source_bytes: int | None
    chunks: Callable[[ProgressCallback | None], Iterator[bytes]]

    def headers(self) -> dict[str, str]:
        """Content-Type and, when known, Content-Length (else httpx sends it chunked)."""
        headers = {"Content-Type": self.content_type}
        if self.length is not None:
            headers["Content-Length"] = str(self.length)
        return headers


class _Sink:
    """A write-only, unseekable buffer that zipfile writes into while we hand its bytes on."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        """Collect bytes written by zipfile."""
        self._buffer += data
        return len(data)

    def flush(self) -> None:
        """Nothing to flush; bytes leave through `take`."""

    def close(self) -> None:
        """Nothing to release."""

    def take(self) -> bytes:
        """The bytes collected since the last call."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def _walk(folder: Path) -> Iterator[tuple[Path, str]]:
    """Files and folders under folder (sorted, symlinked folders not followed) with their zip names."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        rel_root = Path(root).relative_to(folder)
        if rel_root != Path(".") and not files and not dirs:
            yield Path(root), rel_root.as_posix() + "/"
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file():
                yield path, (rel_root / name).as_posix()


def folder_size(folder: Path) -> tuple[int, int]:
    """Number of files and their total size under folder."""
    count = total = 0
    for path, arcname in _walk(folder):
        if not arcname.endswith("/"):
            count += 1
            total += path.stat().st_size
    return count, total


def _zip_folder(folder: Path, progress: ProgressCallback | None, compress: bool) -> Iterator[bytes]:
    """Yield a zip of the folder's contents as it is written, reading each file once, in chunks."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:
        for path, arcname in _walk(folder):
            info = zipfile.ZipInfo.from_file(path, arcname)
            if arcname.endswith("/"):
                archive.writestr(info, b"")
                yield sink.take()
                continue
            stored = not compress or path.suffix.lower() in _STORED_SUFFIXES
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            if not stored:
                # Level 1: inputs can be several GB and deflate's higher levels cost CPU for little gain.
                setattr(info, "compress_level" if hasattr(info, "compress_level") else "_compresslevel", 1)
            with open(path, "rb") as src, archive.open(info, "w", force_zip64=info.file_size > 2**31) as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    if progress:
                        progress(len(chunk))
                    data = sink.take()
                    if data:
                        yield data
            yield sink.take()
    yield sink.take()


def _multipart(field: str, filename: str) -> tuple[str, bytes, bytes]:
    """Content type, head and tail of a one-file multipart body."""
    boundary = "inference-" + secrets.token_hex(16)
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{safe_name}"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", head, tail


def folder_body(folder: Path, *, field: str = "zip_file", compress: bool = True) -> Body:
    """A multipart body whose file is the folder's contents, zipped while it is sent (length unknown)."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    content_type, head, tail = _multipart(field, folder.resolve().name + ".zip")
    _, total = folder_size(folder)

    def chunks(progress: ProgressCallback | None) -> Iterator[bytes]:
        yield head
        for data in _zip_folder(folder, progress, compress):
            if data:
                yield data
        yield tail

    return Body(content_type=content_type, length=None, total_source_bytes=total, chunks=chunks)


def zip_file_body(path: Path, *, field: str = "zip_file") -> Body:
    """A multipart body streaming an existing zip file from disk, with a known length."""
    size = path.stat().st_size
    content_type, head, tail = _multipart(field, path.name)

    def chunks(progress: ProgressCallback | None) -> Iterator[bytes]:
        yield head
        with open(path, "rb") as src:
            while chunk := src.read(_CHUNK):
                if progress:
                    progress(len(chunk))
                yield chunk
        yield tail

    return Body(content_type=content_type, length=len(head) + size + len(tail), total_source_bytes=size, chunks=chunks)


def bytes_body(data: bytes, *, field: str = "zip_file", filename: str = "input.zip") -> Body:
    """A multipart body from bytes in memory."""
    content_type, head, tail = _multipart(field, filename)

    def chunks(progress: ProgressCallback | None) -> Iterator[bytes]:
        yield head
        yield data
        if progress:
            progress(len(data))
        yield tail

    return Body(
        content_type=content_type,
        length=len(head) + len(data) + len(tail),
        total_source_bytes=len(data),
        chunks=chunks,
    )


def fileobj_body(fileobj: BinaryIO, *, field: str = "zip_file", filename: str = "input.zip") -> Body:
    """A multipart body read from an open binary file (sent once: a retry needs a seekable file)."""
    content_type, head, tail = _multipart(field, filename)
    start = fileobj.tell() if fileobj.seekable() else None

    def chunks(progress: ProgressCallback | None) -> Iterator[bytes]:
        if start is not None:
            fileobj.seek(start)
        yield head
        while chunk := fileobj.read(_CHUNK):
            if progress:
                progress(len(chunk))
            yield chunk
        yield tail

    return Body(content_type=content_type, length=None, total_source_bytes=None, chunks=chunks)


def input_body(input: InputSource) -> Body:
    """The multipart body for a task input, checked locally where it is a path."""
    if isinstance(input, bytes | bytearray):
        return bytes_body(bytes(input))
    if isinstance(input, str | os.PathLike):
        path = Path(input)
        if path.is_dir():
            return folder_body(path)
        if not path.exists():
            raise BadRequestError(f"input not found: {path}")
        if not path.is_file():
            raise BadRequestError(f"input is neither a folder nor a file: {path}")
        if not zipfile.is_zipfile(path):
            raise BadRequestError(f"{path} is not a zip file; give a zip or a folder")
        return zip_file_body(path)
    if hasattr(input, "read"):
        return fileobj_body(input, filename=Path(getattr(input, "name", "input.zip")).name)
    raise TypeError(f"input must be a folder, a zip path, bytes or a binary file, not {type(input).__name__}")


def model_zip_body(model_zip: str | os.PathLike[str]) -> Body:
    """The multipart body of a model zip (or a folder, zipped on the fly), checked locally first."""
    path = Path(model_zip)
    if path.is_dir():
        return folder_body(path)
    if not path.is_file():
        raise BadRequestError(f"model zip not found: {path}")
    if not zipfile.is_zipfile(path):
        raise BadRequestError(f"{path} is not a zip file")
    return zip_file_body(path)
