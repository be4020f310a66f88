"""common.zips: the checks and the extraction refuse what is unsafe, whatever the zip's directory claims."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from common.zips import ExtractionFailed, UnsafeZipError, ZipSettings, check_zip, safe_extract
from tests.faults.bad_zips import BAD_ZIPS

LIMITS = ZipSettings(max_zip_total_bytes=10 * 1024**2, max_zip_files=40, max_zip_ratio=100)


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


def _mode(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


def test_extracts_nested_tree_with_modes(tmp_path: Path) -> None:
    source = _zip(
        tmp_path / "a.zip",
        [("a/b/c.txt", b"deep"), (_mode("run.sh", stat.S_IFREG | 0o755), b"#!/bin/sh\n"), ("empty/", b"")],
    )
    summary = safe_extract(source, tmp_path / "out", LIMITS)
    assert summary.files == 3
    assert (tmp_path / "out/a/b/c.txt").read_bytes() == b"deep"
    assert os.stat(tmp_path / "out/run.sh").st_mode & 0o777 == 0o755
    assert (tmp_path / "out/empty").is_dir()


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("../escape.txt", "'..'"),
        ("a/../../escape.txt", "'..'"),
        ("/abs.txt", "absolute"),
        ("C:/win.txt", "absolute"),
        (_mode("link", stat.S_IFLNK | 0o777), "symbolic link"),
        (_mode("fifo", stat.S_IFIFO | 0o644), "not a regular file"),
    ],
)
def test_unsafe_entries_are_refused(tmp_path: Path, entry: zipfile.ZipInfo | str, words: str) -> None:
    source = _zip(tmp_path / "bad.zip", [(entry, b"x")])
    with pytest.raises(UnsafeZipError, match=words):
        check_zip(source, LIMITS)
    with pytest.raises(UnsafeZipError):
        safe_extract(source, tmp_path / "out", LIMITS)
    assert not (tmp_path / "escape.txt").exists()


def test_limits(tmp_path: Path) -> None:
    many = _zip(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(41)])
    with pytest.raises(UnsafeZipError, match="41 entries"):
        check_zip(many, LIMITS)
    bomb = _zip(tmp_path / "bomb.zip", [("z", b"\0" * (5 * 1024**2))])
    with pytest.raises(UnsafeZipError, match="zip bomb"):
        check_zip(bomb, LIMITS)
    big = _zip(tmp_path / "big.zip", [(f"r{i}", os.urandom(4 * 1024**2)) for i in range(3)], zipfile.ZIP_STORED)
    with pytest.raises(UnsafeZipError, match="expands to"):
        check_zip(big, LIMITS)


def test_not_a_zip_and_truncated(tmp_path: Path) -> None:
    (tmp_path / "text.zip").write_text("hello")
    with pytest.raises(UnsafeZipError, match="not a valid zip"):
        check_zip(tmp_path / "text.zip", LIMITS)
    whole = _zip(tmp_path / "whole.zip", [("a", os.urandom(10000))]).read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UnsafeZipError, match="not a valid zip"):
        check_zip(tmp_path / "cut.zip", LIMITS)


def test_lying_directory_is_caught_while_extracting(tmp_path: Path) -> None:
    """A zip whose directory understates an entry's size is stopped by the bytes actually written."""
    real = io.BytesIO()
    with zipfile.ZipFile(real, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("data", b"A" * (2 * 1024**2))
    raw = bytearray(real.getvalue())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (10).to_bytes(4, "little")  # uncompressed size in the directory: 10
    (tmp_path / "liar.zip").write_bytes(raw)
    limits = ZipSettings(max_zip_total_bytes=1024**2, max_zip_files=10, max_zip_ratio=1000)
    with pytest.raises(UnsafeZipError):
        safe_extract(tmp_path / "liar.zip", tmp_path / "out", limits)


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_zips_the_consumer_cannot_extract_are_refused_naming_the_entry(tmp_path: Path, case: str) -> None:
    data, words = BAD_ZIPS[case]
    (tmp_path / "bad.zip").write_bytes(data)
    with pytest.raises(UnsafeZipError) as refused:
        check_zip(tmp_path / "bad.zip", LIMITS)
    for word in words:
        assert word in str(refused.value), (word, str(refused.value))


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_supported_methods_and_ordinary_trees_pass(tmp_path: Path, method: int) -> None:
    source = _zip(tmp_path / "ok.zip", [("scan/", b""), ("scan/a.txt", b"a"), ("scan/sub/b.txt", b"b")], method)
    assert check_zip(source, LIMITS).files == 3
    safe_extract(source, tmp_path / "out", LIMITS)
    assert (tmp_path / "out/scan/sub/b.txt").read_bytes() == b"b"


def test_a_write_error_is_not_an_unsafe_zip(tmp_path: Path) -> None:
    """A disk that refuses the bytes (here: a read-only folder) is the host's problem, not the zip's."""
    source = _zip(tmp_path / "ok.zip", [("a.txt", b"a")])
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(ExtractionFailed) as failed:
        safe_extract(source, blocked / "out", LIMITS)
    assert not isinstance(failed.value, UnsafeZipError)
    assert isinstance(failed.value, OSError)
