"""Uploads and downloads of a big zip on each path, and the public API's memory meanwhile."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx

from bench.common import MIB, RssSampler, make_big_zip
from bench.public_chain.measure import Samples, measure, rotated
from bench.public_chain.options import MODEL_HID, PATHS
from bench.public_chain.stack import Processes


def upload(client: httpx.Client, path: Path) -> tuple[str, float]:
    """Post the zip as a task (multipart, as users do); its uid and MiB/s."""
    start = time.perf_counter()
    with path.open("rb") as handle:
        res = client.post(
            "/api/tasks/", params={"human_readable_id": MODEL_HID}, files={"zip_file": ("in.zip", handle)}
        )
    elapsed = time.perf_counter() - start
    if res.status_code != 200:
        raise RuntimeError(f"upload answered {res.status_code}: {res.text[:300]}")
    return json.loads(res.content), path.stat().st_size / MIB / elapsed


def download(client: httpx.Client, uid: str, size: int) -> float:
    """Fetch a task's output (read and dropped); MiB/s."""
    start = time.perf_counter()
    received = 0
    with client.stream("GET", f"/api/tasks/{uid}") as res:
        if res.status_code != 200:
            raise RuntimeError(f"download answered {res.status_code}")
        for chunk in res.iter_raw(MIB):
            received += len(chunk)
    elapsed = time.perf_counter() - start
    if received != size:
        raise RuntimeError(f"downloaded {received} bytes, expected {size}")
    return size / MIB / elapsed


def finish_with_output(direct: httpx.Client, token: str, uid: str, path: Path) -> None:
    """Act as a consumer: claim the task, upload `path` as its output, finish it."""
    headers = {"X-Internal-Token": token}
    direct.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "bench"}, headers=headers).raise_for_status()
    with path.open("rb") as handle:
        direct.put(
            f"/internal/tasks/{uid}/output",
            params={"consumer_id": "bench", "attempt": 1},
            content=handle,
            headers={**headers, "Content-Type": "application/zip"},
        ).raise_for_status()
    direct.post(
        f"/internal/tasks/{uid}/finish",
        json={"consumer_id": "bench", "attempt": 1, "status": "finished"},
        headers=headers,
    ).raise_for_status()


def measure_transfers(
    processes: Processes,
    client: dict[str, httpx.Client],
    token: str,
    public_pid: int,
    workdir: Path,
    small: Path,
    args: argparse.Namespace,
) -> tuple[Samples, Samples, list[int]]:
    """Uploads and downloads of a `--size-mib` zip on each path, `--repeat` rounds interleaved; the public API's
    peak RSS growth over each of the chain's rounds."""
    big = workdir / "big.zip"
    size = make_big_zip(big, args.size_mib * MIB)
    size_mib = size / MIB
    uploads: Samples = {path: [] for path in PATHS}
    downloads: Samples = {path: [] for path in PATHS}
    growth: list[int] = []
    # One finished task whose output every path downloads.
    output_uid, _ = upload(client["direct"], small)
    finish_with_output(client["direct"], token, output_uid, big)
    for run in range(args.repeat):
        for path in rotated(PATHS, run):
            uid: list[str] = []

            def timed_upload(p: str = path, out: list[str] = uid) -> float:
                task, rate = upload(client[p], big)
                out.append(task)
                return rate

            def timed_download(p: str = path) -> float:
                return download(client[p], output_uid, size)

            with RssSampler(public_pid) as rss:
                uploads[path].append(measure(processes, timed_upload, size_mib))
                downloads[path].append(measure(processes, timed_download, size_mib))
            if path == "chain":
                growth.append(rss.growth)
            # Free the disk: the stored input is not needed again.
            client["direct"].delete(f"/api/tasks/{uid[0]}").raise_for_status()
    return uploads, downloads, growth
