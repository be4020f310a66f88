"""Polls per second of one pending task: the private API against a bare FastAPI app, with wrk or Python."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import ServerProcess, cpu_seconds
from bench.private_api.options import PENDING_BODY, Options
from bench.private_api.server import PrivateApi

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
