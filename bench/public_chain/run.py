"""Runs the public chain benchmark: start the stack, poll, transfer, report, stop it all."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench.common import MIB, disk_free, make_big_zip, write_results
from bench.public_chain.options import MODEL_HID, PATHS, parse_options
from bench.public_chain.polling import measure_polling
from bench.public_chain.report import report, results
from bench.public_chain.stack import (
    Clients,
    Processes,
    Traefik,
    private_api_server,
    public_api_server,
    start_traefik,
    traefik_pid,
)
from bench.public_chain.transfers import measure_transfers, upload


def run(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the results."""
    args = parse_options(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-public-chain-"))
    # The zip, one stored input and one stored output at a time, with room to spare.
    needed = 4 * args.size_mib * MIB
    if disk_free(workdir) < needed:
        sys.exit(f"need {needed // MIB} MiB free under {workdir} for a {args.size_mib} MiB benchmark")
    token = "bench-internal-token-" + uuid.uuid4().hex
    private = private_api_server(workdir, token)
    public = public_api_server(workdir, token, private.url)
    traefik: Traefik | None = None
    clients: Clients | None = None
    try:
        private.wait_healthy(60)
        public.wait_healthy(30)
        traefik = start_traefik(public.port, workdir)
        processes = Processes({"private": private.pid, "public": public.pid})
        if traefik and (pid := traefik_pid(traefik[0])):
            processes.pids["traefik"] = pid
        clients = Clients(private, public, token, traefik)
        client = {path: clients.make(path) for path in PATHS}
        client["direct"].post(
            "/api/models/", params={"container_tag": "busybox", "human_readable_id": MODEL_HID, "use_gpu": "false"}
        ).raise_for_status()
        small = workdir / "small.zip"
        make_big_zip(small, 64 * 1024)
        pending, _ = upload(client["direct"], small)
        polls, concurrent = measure_polling(processes, client, clients.make, pending, args)
        uploads, downloads, growth = measure_transfers(processes, client, token, public.pid, workdir, small, args)
        figures = results(args, traefik is not None, polls, concurrent, uploads, downloads, growth)
        report(args, figures)
        print(f"\nwrote {write_results('public_chain', figures)}")
        return 0
    finally:
        if clients is not None:
            clients.close()
        if traefik:
            subprocess.run(["docker", "rm", "-f", traefik[0]], capture_output=True)
        public.stop()
        private.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run())
