"""What the private API benchmark measures, its goals, and its command line."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

GOAL_TRANSFER_RATIO = 0.5
GOAL_RSS_GROWTH_MIB = 64.0
GOAL_POLL_RATIO = 0.6
MODEL_HID = "bench"
PENDING_BODY = {"detail": "task is pending", "status": "pending"}


@dataclass
class Options:
    """What to measure and how often."""

    size_mib: int = 1024
    runs: int = 3
    tasks: int = 100_000
    poll_runs: int = 5
    poll_seconds: int = 4
    connections: int = 8
    load: str = "auto"
    pin: bool = True
    strict: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


def parse_options(argv: list[str] | None) -> Options:
    """Options from the command line; argparse exits with a clear message on bad values."""
    parser = argparse.ArgumentParser(
        prog="python -m bench private_api", description="Benchmark of the private API: uploads, downloads, polling."
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="content of the transferred zip (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement; the median is reported")
    parser.add_argument("--tasks", type=int, default=100_000, help="pending tasks put into the database for polling")
    parser.add_argument("--poll-runs", type=int, default=5, help="alternating polling measurements of each server")
    parser.add_argument("--poll-seconds", type=int, default=4, help="length of each polling measurement")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections of the load generator")
    parser.add_argument(
        "--load", choices=("auto", "wrk", "python"), default="auto", help="load generator (auto: wrk when installed)"
    )
    parser.add_argument("--strict", action="store_true", help="exit with 1 when a goal is missed")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="while polling, do not pin the servers and the load generator to CPUs",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where the temp files go (one disk)"
    )
    ns = parser.parse_args(argv)
    if ns.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    if ns.runs < 1:
        parser.error("--runs must be at least 1")
    if ns.tasks < 1:
        parser.error("--tasks must be at least 1 (one pending task is polled)")
    if ns.poll_runs < 1:
        parser.error("--poll-runs must be at least 1")
    if ns.poll_seconds < 1:
        parser.error("--poll-seconds must be at least 1")
    if ns.connections < 1:
        parser.error("--connections must be at least 1")
    if ns.load == "wrk" and shutil.which("wrk") is None:
        parser.error("--load wrk: wrk is not installed (apt-get install wrk), or use --load python")
    if not ns.workdir.is_dir():
        parser.error(f"--workdir {ns.workdir} is not a folder")
    return Options(**vars(ns))


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs the servers and the client use (None: no pinning)."""

    servers: frozenset[int] | None
    client: frozenset[int] | None

    @classmethod
    def make(cls, pin: bool) -> CpuPlan:
        """Servers on the first allowed CPU, the client on the rest; no pinning with one CPU or when asked."""
        allowed = sorted(os.sched_getaffinity(0))
        if not pin or len(allowed) < 2:
            return cls(None, None)
        return cls(frozenset(allowed[:1]), frozenset(allowed[1:]))
