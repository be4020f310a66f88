"""Benchmark of the private API (issue 2): 1 GiB zip upload and download, and polling a pending task.

Run: `python -m bench private_api [--size-mib 1024] [--runs 3] [--tasks 100000] [--poll-runs 5] [--poll-seconds 4]`.

Each figure is compared with a baseline measured in the same run, on the same disk and the same CPUs:
- upload (`POST /api/tasks/`, multipart): against copying the same file plus fsync (the API fsyncs what it stores);
- download (`GET /api/tasks/{uid}`, written to a file): against copying the same file (the client does not fsync);
- the API process's peak VmRSS growth during each transfer (sampled every 5 ms from /proc);
- polls per second of one pending task (answer 551) with 100,000 tasks in the database: against a bare FastAPI app
  served by uvicorn the same way (one worker, same log level) whose one route gives the same answer.
Transfers run unpinned (the API may use every CPU, as in production; the Python client competes with it). While
polling, with two or more CPUs, both servers are pinned to the first CPU and the load generator to the others, so
that the load generator never eats a server's CPU. Prints a markdown table and writes bench/results/private_api.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    MIB,
    RssSampler,
    ServerProcess,
    cpu_seconds,
    disk_free,
    free_port,
    make_big_zip,
    median,
    print_table,
    write_results,
)

GOAL_TRANSFER_RATIO = 0.5
GOAL_RSS_GROWTH_MIB = 64.0
GOAL_POLL_RATIO = 0.6
MODEL_HID = "bench"
PENDING_BODY = {"detail": "task is pending", "status": "pending"}
_WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body) if status ~= 551 then bad = bad + 1 end end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("BAD %d\\n", total))
end
"""


def bare_app() -> Any:
    """The polling baseline: a bare FastAPI app whose one route answers what the private API answers a pending task."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/api/tasks/{uid}")
    async def poll(uid: str) -> JSONResponse:
        """Always pending."""
        return JSONResponse(PENDING_BODY, status_code=551)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Ready."""
        return {"status": "ok"}

    return app


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
    parser = argparse.ArgumentParser(prog="python -m bench private_api", description=__doc__.split("\n")[0])
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


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def copy_file(src: Path, dst: Path, *, fsync: bool) -> float:
    """Seconds to copy src to dst (and fsync it when asked): the transfer baseline."""

    start = time.perf_counter()
    shutil.copyfile(src, dst)
    if fsync:
        _fsync(dst)
    return time.perf_counter() - start


class PrivateApi:
    """The real private API as a subprocess, and the calls the benchmark makes to it."""

    def __init__(self, workdir: Path, *, max_bytes: int) -> None:
        self.token = "bench-" + secrets.token_hex(16)
        self.data_dir = workdir / "data"
        port = free_port()
        env = {
            "INTERNAL_TOKEN": self.token,
            "DATA_DIR": str(self.data_dir),
            "DATABASE_URL": "",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            # An unreachable broker unless one is given: the API still accepts tasks (they wait in the outbox).
            "RABBITMQ_URL": os.environ.get("RABBITMQ_URL") or f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
            "LOG_LEVEL": "WARNING",
            "MAX_UPLOAD_BYTES": str(max_bytes),
            # The polling measurement keeps 100,000 tasks pending: the queue must not count as full.
            "MAX_QUEUED_TASKS": "10000000",
            "MAX_ZIP_TOTAL_BYTES": str(max_bytes),
        }
        self.server = ServerProcess(
            [sys.executable, "-m", "private_api"], port=port, env=env, log_path=workdir / "private_api.log"
        )
        self.client = httpx.Client(base_url=self.server.url, headers={"X-Internal-Token": self.token}, timeout=600)

    def start(self) -> PrivateApi:
        """Wait until it is ready, and register the benchmark's model."""
        self.server.wait_healthy(60)
        res = self.client.post(
            "/api/models/",
            params={"container_tag": "busybox", "human_readable_id": MODEL_HID, "use_gpu": "false"},
        )
        _expect(res, 200, "register the model")
        self.model_id = int(res.json()["id"])
        return self

    def stop(self) -> None:
        """Close the client and stop the process."""
        self.client.close()
        self.server.stop()

    def upload(self, path: Path) -> str:
        """POST path as a task's input zip (streamed from disk); the task uid."""
        with path.open("rb") as handle:
            res = self.client.post(
                "/api/tasks/",
                params={"human_readable_id": MODEL_HID},
                files={"zip_file": (path.name, handle, "application/zip")},
            )
        _expect(res, 200, "upload the input zip")
        uid = json.loads(res.content)
        if not isinstance(uid, str):
            raise RuntimeError(f"upload answered {res.text[:200]!r}, not a uid")
        return uid

    def claim(self, uid: str) -> None:
        """Claim the task as the consumer `bench`."""
        res = self.client.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "bench"})
        _expect(res, 200, "claim the task")

    def put_output(self, uid: str, path: Path) -> None:
        """Upload path as the task's output zip (raw body, streamed from disk)."""
        with path.open("rb") as handle:
            res = self.client.put(
                f"/internal/tasks/{uid}/output",
                params={"consumer_id": "bench", "attempt": 1},
                content=handle,
                headers={"Content-Type": "application/zip"},
            )
        _expect(res, 200, "upload the output zip")

    def finish(self, uid: str) -> None:
        """Mark the task finished with exit code 0."""
        res = self.client.post(
            f"/internal/tasks/{uid}/finish",
            json={"consumer_id": "bench", "attempt": 1, "status": "finished", "exit_code": 0},
        )
        _expect(res, 200, "finish the task")

    def download(self, uid: str, dest: Path) -> int:
        """GET the task's output zip into dest; its size."""
        size = 0
        with self.client.stream("GET", f"/api/tasks/{uid}") as res, dest.open("wb") as out:
            if res.status_code != 200:
                res.read()
                _expect(res, 200, "download the output zip")
            for chunk in res.iter_raw(MIB):
                out.write(chunk)
                size += len(chunk)
        return size

    def delete(self, uid: str) -> None:
        """Cancel the task and delete its files."""
        _expect(self.client.delete(f"/api/tasks/{uid}"), 200, "delete the task")

    def insert_pending_tasks(self, count: int) -> tuple[list[str], float]:
        """Bulk-insert count published, pending tasks of the benchmark's model; their uids and the seconds it took."""
        from sqlalchemy import insert

        from private_api.db import make_engine
        from private_api.orm import Task

        engine = make_engine(f"sqlite:///{self.data_dir / 'inference.sqlite3'}")
        now = datetime.now(UTC)
        uids = [secrets.token_urlsafe(24) for _ in range(count)]
        start = time.perf_counter()
        try:
            with engine.begin() as connection:
                for first in range(0, count, 10_000):
                    rows = [
                        {
                            "uid": uid,
                            "model_id": self.model_id,
                            "model_hid": MODEL_HID,
                            "use_gpu": False,
                            "owner": None,
                            "status": "pending",
                            "deleted": False,
                            "attempt": 0,
                            "input_size": 0,
                            "input_sha256": "",
                            "created_at": now,
                            "published_at": now,
                        }
                        for uid in uids[first : first + 10_000]
                    ]
                    connection.execute(insert(Task), rows)
        finally:
            engine.dispose()
        return uids, time.perf_counter() - start


def _expect(res: httpx.Response, status: int, what: str) -> None:
    """RuntimeError naming the step when the answer is not status."""
    if res.status_code != status:
        raise RuntimeError(
            f"{what}: {res.request.method} {res.request.url.path} answered {res.status_code}: {res.text[:300]}"
        )


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


@dataclass(frozen=True)
class LoadResult:
    """What a load generator saw: answers, answers other than 551, errors, seconds."""

    requests: int
    bad: int
    errors: int
    seconds: float
    server_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        """Answers per second."""
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        """The server's CPU time per answer, in microseconds (less sensitive to a noisy machine than the rate)."""
        return self.server_cpu_s / self.requests * 1e6


def _wrk(
    url: str, headers: dict[str, str], connections: int, seconds: int, script: Path, cpus: frozenset[int] | None
) -> LoadResult:
    """Run wrk (one thread) against url; parse its counts."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*command, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr + done.stdout).strip()[:500]}")
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", done.stdout)
    bad = re.search(r"^BAD (\d+)$", done.stdout, re.MULTILINE)
    if total is None or bad is None:
        raise RuntimeError(f"cannot read wrk's output:\n{done.stdout}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", done.stdout)
    return LoadResult(
        requests=int(total.group(1)),
        bad=int(bad.group(1)),
        errors=sum(int(n) for n in errors.groups()) if errors else 0,
        seconds=float(total.group(2)) * scale,
    )


def _python_worker(
    port: int, path: str, headers: dict[str, str], seconds: float, cpus: frozenset[int] | None, out: Any
) -> None:
    """One keep-alive connection polling path as fast as it can for seconds; sends (answers, bad, errors)."""
    import http.client

    if cpus:
        os.sched_setaffinity(0, cpus)
    answers = bad = errors = 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        try:
            connection.request("GET", path, headers=headers)
            res = connection.getresponse()
            res.read()
            answers += 1
            bad += res.status != 551
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.close()
    out.send((answers, bad, errors))


def _python_load(
    port: int, path: str, headers: dict[str, str], connections: int, seconds: float, cpus: frozenset[int] | None
) -> LoadResult:
    """Poll with `connections` processes, one http.client keep-alive connection each."""
    context = multiprocessing.get_context("fork")
    pipes, workers = [], []
    for _ in range(connections):
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(target=_python_worker, args=(port, path, headers, seconds, cpus, sender))
        worker.start()
        pipes.append(receiver)
        workers.append(worker)
    start = time.perf_counter()
    totals = [0, 0, 0]
    for receiver, worker in zip(pipes, workers, strict=True):
        if not receiver.poll(seconds + 60):
            raise RuntimeError("a load generator process did not report")
        for i, value in enumerate(receiver.recv()):
            totals[i] += value
        worker.join()
    return LoadResult(requests=totals[0], bad=totals[1], errors=totals[2], seconds=time.perf_counter() - start)


class LoadGenerator:
    """Polls one URL path over keep-alive connections for a fixed time, with wrk or with Python processes."""

    def __init__(self, kind: str, workdir: Path, connections: int, cpus: frozenset[int] | None) -> None:
        self.kind = "wrk" if kind == "wrk" or (kind == "auto" and shutil.which("wrk")) else "python"
        self.connections = connections
        self.cpus = cpus
        self.script = workdir / "count551.lua"
        self.script.write_text(_WRK_SCRIPT)

    def run(self, server: ServerProcess, path: str, headers: dict[str, str], seconds: int) -> LoadResult:
        """Load server for seconds; RuntimeError when any answer is not 551 or a connection failed."""
        cpu_before = cpu_seconds(server.pid)
        if self.kind == "wrk":
            result = _wrk(server.url + path, headers, self.connections, seconds, self.script, self.cpus)
        else:
            result = _python_load(server.port, path, headers, self.connections, seconds, self.cpus)
        result = dataclasses.replace(result, server_cpu_s=cpu_seconds(server.pid) - cpu_before)
        if result.requests == 0 or result.bad or result.errors:
            raise RuntimeError(
                f"polling {server.url}{path}: {result.requests} answers, {result.bad} not 551, {result.errors} errors"
                f"\n{server.log_tail()}"
            )
        return result


@dataclass(frozen=True)
class PollRun:
    """One polling repetition: rates and server CPU per answer of the API and the bare app."""

    api_per_s: float
    bare_per_s: float
    api_cpu_us: float
    bare_cpu_us: float


def measure_polling(
    api: PrivateApi,
    bare: ServerProcess,
    uid: str,
    load: LoadGenerator,
    options: Options,
    server_cpus: frozenset[int] | None,
) -> list[PollRun]:
    """Polls per second of the API and of the bare app, alternating, poll_runs times."""
    path = f"/api/tasks/{uid}"
    api_headers = {"X-Internal-Token": api.token}
    for server, headers in ((api.server, api_headers), (bare, {})):
        res = httpx.get(server.url + path, headers=headers, timeout=10)
        if res.status_code != 551 or res.json() != PENDING_BODY:
            raise RuntimeError(f"{server.url}{path} answered {res.status_code} {res.text[:200]}, not 551 pending")
    results = []
    # Both servers get the same one CPU and the load generator the others, so that neither eats the other's CPU.
    api.server.pin(server_cpus)
    bare.pin(server_cpus)
    try:
        for server, headers in ((api.server, api_headers), (bare, {})):
            load.run(server, path, headers, 1)  # warm-up
        for run in range(options.poll_runs):
            order = [("api", api.server, api_headers), ("bare", bare, {})]
            if run % 2:
                order.reverse()
            got = {name: load.run(server, path, headers, options.poll_seconds) for name, server, headers in order}
            result = PollRun(
                api_per_s=got["api"].rate,
                bare_per_s=got["bare"].rate,
                api_cpu_us=got["api"].cpu_us_per_request,
                bare_cpu_us=got["bare"].cpu_us_per_request,
            )
            print(
                f"  poll run {run + 1}/{options.poll_runs}: private API {result.api_per_s:.0f}/s "
                f"({result.api_cpu_us:.0f} us CPU each), bare FastAPI {result.bare_per_s:.0f}/s "
                f"({result.bare_cpu_us:.0f} us CPU each)",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    finally:
        api.server.pin(None)
        bare.pin(None)
    return results


def summarize(
    options: Options, size: int, transfers: list[TransferRun], polls: list[PollRun], extra: dict[str, Any]
) -> dict[str, Any]:
    """Medians, ratios against the same run's baselines, and whether each goal is met."""
    mib = size / MIB
    upload_ratio = median(t.copy_fsync_s / t.upload_s for t in transfers)
    download_ratio = median(t.copy_s / t.download_s for t in transfers)
    poll_ratio = median(p.api_per_s / p.bare_per_s for p in polls)
    upload_rss = max(t.upload_rss_growth for t in transfers) / MIB
    download_rss = max(t.download_rss_growth for t in transfers) / MIB
    return {
        "benchmark": "private_api",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "uvicorn_extras": [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name)],
        },
        "options": {**asdict(options), "workdir": str(options.workdir)},
        **extra,
        "zip_bytes": size,
        "upload": {
            "api_mib_s": median(mib / t.upload_s for t in transfers),
            "copy_fsync_mib_s": median(mib / t.copy_fsync_s for t in transfers),
            "ratio": upload_ratio,
            "ratio_vs_copy_without_fsync": median(t.copy_s / t.upload_s for t in transfers),
            "goal_ratio": GOAL_TRANSFER_RATIO,
            "met": upload_ratio >= GOAL_TRANSFER_RATIO,
            "peak_rss_growth_mib": upload_rss,
        },
        "download": {
            "api_mib_s": median(mib / t.download_s for t in transfers),
            "copy_mib_s": median(mib / t.copy_s for t in transfers),
            "ratio": download_ratio,
            "goal_ratio": GOAL_TRANSFER_RATIO,
            "met": download_ratio >= GOAL_TRANSFER_RATIO,
            "peak_rss_growth_mib": download_rss,
        },
        "output_put": {"api_mib_s": median(mib / t.output_put_s for t in transfers)},
        "rss": {
            "peak_growth_mib": max(upload_rss, download_rss),
            "goal_mib": GOAL_RSS_GROWTH_MIB,
            "met": max(upload_rss, download_rss) < GOAL_RSS_GROWTH_MIB,
        },
        "poll": {
            "api_per_s": median(p.api_per_s for p in polls),
            "bare_per_s": median(p.bare_per_s for p in polls),
            "ratio": poll_ratio,
            "api_cpu_us_per_request": median(p.api_cpu_us for p in polls),
            "bare_cpu_us_per_request": median(p.bare_cpu_us for p in polls),
            "cpu_ratio": median(p.bare_cpu_us / p.api_cpu_us for p in polls),
            "goal_ratio": GOAL_POLL_RATIO,
            "met": poll_ratio >= GOAL_POLL_RATIO,
        },
        "runs": {"transfers": [asdict(t) for t in transfers], "polls": [asdict(p) for p in polls]},
    }


def report(results: dict[str, Any]) -> None:
    """Print the results as a markdown table."""
    up, down, rss, poll = results["upload"], results["download"], results["rss"], results["poll"]
    size = f"{results['zip_bytes'] / MIB:.0f} MiB zip"

    def met(ok: bool) -> str:
        return "yes" if ok else "NO"

    print(
        f"\nPrivate API, {results['date']}, {results['machine']['cpus']} CPUs, median of {results['options']['runs']} "
        f"runs, load generator {results['load_generator']}, {results['tasks_in_database']:,} tasks in the database\n"
    )
    print_table(
        ("measurement", "private API", "baseline (same run)", "ratio", "goal", "met"),
        [
            (
                f"upload {size} (POST /api/tasks/)",
                f"{up['api_mib_s']:.0f} MiB/s",
                f"copy + fsync {up['copy_fsync_mib_s']:.0f} MiB/s",
                f"{up['ratio']:.2f}",
                ">= 0.50",
                met(up["met"]),
            ),
            (
                f"download {size} (GET /api/tasks/{{uid}})",
                f"{down['api_mib_s']:.0f} MiB/s",
                f"copy {down['copy_mib_s']:.0f} MiB/s",
                f"{down['ratio']:.2f}",
                ">= 0.50",
                met(down["met"]),
            ),
            (
                "peak RSS growth of the API (upload / download)",
                f"{up['peak_rss_growth_mib']:.1f} / {down['peak_rss_growth_mib']:.1f} MiB",
                "",
                "",
                "< 64 MiB",
                met(rss["met"]),
            ),
            (
                f"poll a pending task (551), {results['tasks_in_database']:,} tasks",
                f"{poll['api_per_s']:.0f} req/s",
                f"bare FastAPI {poll['bare_per_s']:.0f} req/s",
                f"{poll['ratio']:.2f}",
                ">= 0.60",
                met(poll["met"]),
            ),
        ],
    )
    print(
        f"\nAlso: output upload (PUT /internal/tasks/{{uid}}/output) {results['output_put']['api_mib_s']:.0f} MiB/s; "
        f"server CPU per poll {poll['api_cpu_us_per_request']:.0f} us (private API) vs "
        f"{poll['bare_cpu_us_per_request']:.0f} us (bare FastAPI): CPU ratio {poll['cpu_ratio']:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; with --strict, exit code 1 when a goal is missed."""
    options = parse_options(argv)
    started = time.monotonic()
    cpus = CpuPlan.make(options.pin)
    workdir = Path(tempfile.mkdtemp(prefix="bench-private-api-", dir=options.workdir))
    size_content = options.size_mib * MIB
    need = 5 * size_content + 512 * MIB
    if disk_free(workdir) < need:
        shutil.rmtree(workdir, ignore_errors=True)
        raise SystemExit(f"not enough free disk in {options.workdir}: need {need / MIB:.0f} MiB")
    api: PrivateApi | None = None
    bare: ServerProcess | None = None
    try:
        print(
            f"preparing in {workdir}; while polling, servers on CPUs {sorted(cpus.servers or [])}, "
            f"load generator on {sorted(cpus.client or [])}",
            file=sys.stderr,
        )
        src = workdir / "input.zip"
        size = make_big_zip(src, size_content)
        api = PrivateApi(workdir, max_bytes=size * 2).start()
        bare_port = free_port()
        bare = ServerProcess(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.private_api:bare_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(bare_port),
                "--log-level",
                "warning",
            ],
            port=bare_port,
            env={},
            log_path=workdir / "bare.log",
        ).wait_healthy(30)
        uids, insert_s = api.insert_pending_tasks(options.tasks)
        print(f"inserted {options.tasks:,} pending tasks in {insert_s:.1f}s", file=sys.stderr, flush=True)
        transfers = measure_transfers(api, src, workdir, options.runs)
        load = LoadGenerator(options.load, workdir, options.connections, cpus.client)
        polls = measure_polling(api, bare, uids[len(uids) // 2], load, options, cpus.servers)
        results = summarize(
            options,
            size,
            transfers,
            polls,
            {
                "load_generator": f"{load.kind}, {options.connections} keep-alive connections",
                "tasks_in_database": options.tasks,
                "cpu_plan": {"servers": sorted(cpus.servers or []), "client": sorted(cpus.client or [])},
                "insert_seconds": insert_s,
            },
        )
        results["seconds"] = time.monotonic() - started
        report(results)
        print(f"\nwrote {write_results('private_api', results)} ({results['seconds']:.0f}s)")
        missed = [k for k in ("upload", "download", "rss", "poll") if not results[k]["met"]]
        if missed:
            print(f"goals missed: {', '.join(missed)}")
        return 1 if missed and options.strict else 0
    finally:
        if bare is not None:
            bare.stop()
        if api is not None:
            api.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
