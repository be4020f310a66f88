"""Runs the private API benchmark: prepare the servers and the zip, measure, report."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import MIB, ServerProcess, disk_free, free_port, make_big_zip, write_results
from bench.private_api.options import CpuPlan, parse_options
from bench.private_api.polling import LoadGenerator, measure_polling
from bench.private_api.report import report, summarize
from bench.private_api.server import PrivateApi
from bench.private_api.transfers import measure_transfers


def run(argv: list[str] | None = None) -> int:
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
                "bench.private_api.server:bare_app",
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
    sys.exit(run())
