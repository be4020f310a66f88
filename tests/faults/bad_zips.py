"""Zips the consumer cannot (or must not) extract, each with the words that the refusal must contain."""

from __future__ import annotations

import io
import warnings
import zipfile


def _zip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", method) as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we mean to write
        for name, data in entries:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


def with_method(data: bytes, method: int) -> bytes:
    """data (a zip of stored entries) with every entry's compression method field set to method."""
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = raw.find(signature)
        while start != -1:
            raw[start + offset : start + offset + 2] = method.to_bytes(2, "little")
            start = raw.find(signature, start + 4)
    return bytes(raw)


def deflate64() -> bytes:
    """What Windows Explorer writes for large files: method 9."""
    return with_method(_zip([("scan/ct.nii", b"x" * 1000)], zipfile.ZIP_STORED), 9)


# name -> (zip bytes, words the 4xx detail must hold: the entry's name and what is wrong)
BAD_ZIPS: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "deflate64": (deflate64(), ("scan/ct.nii", "Deflate64")),
    "unknown method": (with_method(_zip([("a.bin", b"abc")], zipfile.ZIP_STORED), 93), ("a.bin", "method 93")),
    "duplicate names": (_zip([("dup.txt", b"1"), ("dup.txt", b"2")]), ("dup.txt", "twice")),
    "file and folder": (_zip([("a", b"file"), ("a/b", b"inside")]), ("'a'", "both a file and a folder")),
    "dot folder entry": (_zip([("./", b""), ("./ct.txt", b"x")]), ("'./'", "'.'")),
    "dot path": (_zip([("scan/./ct.txt", b"x")]), ("scan/./ct.txt", "'.'")),
    "empty name part": (_zip([("scan//ct.txt", b"x")]), ("scan//ct.txt", "empty")),
    "name too long": (_zip([("scan/" + "n" * 300 + ".nii", b"x")]), ("scan/nnnn", "longer than 255 bytes")),
    "archive ratio": (
        _zip([(f"zeros{i}.bin", b"\0" * (900 * 1024)) for i in range(8)], zipfile.ZIP_BZIP2),
        ("as a whole", "zip bomb"),
    ),
}
