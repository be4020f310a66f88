"""Benchmark of the private API: 1 GiB zip upload and download, and polling a pending task.

Run: `python -m bench private_api [--size-mib 1024] [--runs 3] [--tasks 100000] [--poll-runs 5] [--poll-seconds 4]`.

Each figure is compared with a baseline measured in the same run, on the same disk and the same CPUs:
- upload (`POST /api/tasks/`, multipart): against copying the same file plus fsync (the API fsyncs what it stores);
- download (`GET /api/tasks/{uid}`, written to a file): against copying the same file (the client does not fsync);
- the API process's peak VmRSS growth during each transfer (sampled every 5 ms from /proc);
- polls per second of one pending task (answer 551) with 100,000 tasks in the database: against a bare FastAPI app
  served by uvicorn the same way (one worker, same log level) whose one route gives the same answer.
Transfers run unpinned (the API may use every CPU, as in production); the upload client sends the multipart body
over a plain socket, the file part with sendfile(2), so that it takes little of the CPU the server needs. While
polling, with two or more CPUs, both servers are pinned to the first CPU and the load generator to the others, so
that the load generator never eats a server's CPU. Prints a markdown table and writes bench/results/private_api.json.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see bench/private_api/run.py); with --strict, exit code 1 when a goal is missed."""
    from bench.private_api.run import run

    return run(argv)
