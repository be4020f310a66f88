"""Small helpers the benchmarks share: free ports, server processes, peak RSS sampling, big zips, results."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

__all__ = [
    "MIB",
    "RESULTS_DIR",
    "ROOT",
    "RssSampler",
    "ServerProcess",
    "cpu_seconds",
    "disk_free",
    "free_port",
    "make_big_zip",
    "median",
    "pin_threads",
    "print_table",
    "rss_bytes",
    "write_results",
]

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """The resident set size (VmRSS) of a process, in bytes; ProcessLookupError when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError as exc:
        raise ProcessLookupError(f"process {pid} is gone") from exc
    raise ProcessLookupError(f"process {pid} has no VmRSS (a zombie?)")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in seconds; ProcessLookupError when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except FileNotFoundError as exc:
        raise ProcessLookupError(f"process {pid} is gone") from exc
    # Fields 14 and 15 of proc(5) (utime, stime); the split starts at field 3 (state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin_threads(pid: int, cpus: Iterable[int] | None) -> None:
    """Pin every thread of a running process to cpus (None: all CPUs this process may use); new threads inherit it."""
    target = set(cpus) if cpus is not None else os.sched_getaffinity(0)
    if not target:
        raise ValueError("pin to at least one CPU")
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task.name), target)


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; `growth` is the peak minus the start."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        if interval <= 0:
            raise ValueError("the sampling interval must be positive")
        self.pid = pid
        self.interval = interval
        self.start_bytes = 0
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.start_bytes = self.peak_bytes = rss_bytes(self.pid)
        self._thread = threading.Thread(target=self._run, name=f"rss-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def _sample(self) -> None:
        try:
            self.peak_bytes = max(self.peak_bytes, rss_bytes(self.pid))
            self.samples += 1
        except ProcessLookupError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @property
    def growth(self) -> int:
        """Peak VmRSS during the sampled block minus VmRSS at its start, in bytes."""
        return self.peak_bytes - self.start_bytes


class ServerProcess:
    """A server started as a subprocess (stdout and stderr to a log file), ready once `/healthz` answers 200."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        port: int,
        env: Mapping[str, str],
        log_path: Path,
        cpus: Iterable[int] | None = None,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        cpu_set = set(cpus) if cpus is not None else None

        def _pin() -> None:
            if cpu_set:
                os.sched_setaffinity(0, cpu_set)

        self.process = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin if cpu_set else None,
        )

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def pin(self, cpus: Iterable[int] | None) -> None:
        """Pin all the server's threads to cpus (None: undo the pinning)."""
        pin_threads(self.pid, cpus)

    def log_tail(self, size: int = 3000) -> str:
        """The end of the server's output (to explain a failure)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace")

    def wait_healthy(self, timeout: float = 60.0, path: str = "/healthz") -> ServerProcess:
        """Wait until GET path answers 200; RuntimeError with the server's log when it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with code {self.process.returncode} before it was ready:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer {path} within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after grace seconds; closes the log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def make_big_zip(path: Path, size: int, *, entry: str = "volume.bin") -> int:
    """Write a ZIP_STORED zip holding `size` bytes of random data (it cannot shrink); returns the file's size."""
    if size < 0:
        raise ValueError("the zip content size must not be negative")
    rng = random.Random(size)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive,
        archive.open(entry, "w", force_zip64=size >= 2**31) as out,
    ):
        left = size
        while left:
            step = min(left, 4 * MIB)
            out.write(rng.randbytes(step))
            left -= step
    return path.stat().st_size


def median(values: Iterable[float]) -> float:
    """The median of a non-empty series."""
    values = list(values)
    if not values:
        raise ValueError("no values to take the median of")
    return float(statistics.median(values))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: IO[str] = sys.stdout) -> None:
    """Print a markdown table."""
    print("| " + " | ".join(headers) + " |", file=out)
    print("|" + "|".join("---" for _ in headers) + "|", file=out)
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |", file=out)


def write_results(name: str, results: Mapping[str, Any]) -> Path:
    """Write results as bench/results/<name>.json (the folder is git-ignored); returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    temp = path.with_suffix(".json.part")
    temp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(temp, path)
    return path


def disk_free(path: Path) -> int:
    """Free bytes on the file system that holds path."""
    return shutil.disk_usage(path).free
