"""Upload, output upload and download of one big zip through the private API, next to plain copies."""

from __future__ import annotations

import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import MIB, RssSampler
from bench.private_api.server import PrivateApi, _fsync, copy_file


@dataclass
class TransferRun:
    """One repetition of the transfer measurements (seconds, bytes)."""

    copy_fsync_s: float
    upload_s: float
    upload_rss_growth: int
    output_put_s: float
    copy_s: float
    download_s: float
    download_rss_growth: int


def _entry_sizes(path: Path) -> list[tuple[str, int]]:
    """Names and sizes of a zip's entries."""
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, info.file_size) for info in archive.infolist()]


def measure_transfers(api: PrivateApi, src: Path, workdir: Path, runs: int) -> list[TransferRun]:
    """Upload, output upload and download of src through the API, next to plain copies, runs times."""
    results = []
    size = src.stat().st_size
    for run in range(runs):
        copy = workdir / "copy.zip"
        copy_fsync_s = copy_file(src, copy, fsync=True)
        copy.unlink()
        with RssSampler(api.server.pid) as up_rss:
            start = time.perf_counter()
            uid = api.upload(src)
            upload_s = time.perf_counter() - start
        api.claim(uid)
        start = time.perf_counter()
        api.put_output(uid, src)
        output_put_s = time.perf_counter() - start
        api.finish(uid)
        copy_s = copy_file(src, copy, fsync=False)
        _fsync(copy)  # outside the timer: its write-back must not slow the next measurement
        copy.unlink()
        fetched = workdir / "download.zip"
        with RssSampler(api.server.pid) as down_rss:
            start = time.perf_counter()
            api.download(uid, fetched)
            download_s = time.perf_counter() - start
        _fsync(fetched)
        got = fetched.stat().st_size
        if got != size:
            raise RuntimeError(f"the downloaded zip has {got} bytes, the uploaded one {size}")
        if _entry_sizes(fetched) != _entry_sizes(src):
            raise RuntimeError("the downloaded zip does not hold what was uploaded")
        fetched.unlink()
        api.delete(uid)
        result = TransferRun(
            copy_fsync_s=copy_fsync_s,
            upload_s=upload_s,
            upload_rss_growth=up_rss.growth,
            output_put_s=output_put_s,
            copy_s=copy_s,
            download_s=download_s,
            download_rss_growth=down_rss.growth,
        )
        print(
            f"  transfer run {run + 1}/{runs}: upload {size / MIB / upload_s:.0f} MiB/s "
            f"(copy+fsync {size / MIB / copy_fsync_s:.0f}), download {size / MIB / download_s:.0f} MiB/s "
            f"(copy {size / MIB / copy_s:.0f}), RSS growth {up_rss.growth / MIB:.1f} / {down_rss.growth / MIB:.1f} MiB",
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    return results
