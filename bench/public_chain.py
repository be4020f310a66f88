"""Benchmark of the public chain (issue 4): Traefik (HTTPS) -> public API -> private API, against the private API alone.

Run: `python -m bench public_chain [--size-mib 1024] [--repeat 3] [--poll-repeat 7] [--polls 500] [--concurrency 4]`.

The issue's comparison: what a client gets through the whole chain over HTTPS (Traefik terminating TLS, then the
public API relaying over HTTP) against what the same client gets from the private API directly over plain HTTP. The
same client does both: httpx, HTTP/1.1, one keep-alive connection per polling thread, the same requests. The public
API alone over plain HTTP (no Traefik, no TLS) is measured too, to tell the relay's share from Traefik's and TLS's.
Each transfer is measured `--repeat` times and each polling figure `--poll-repeat` times, the three paths interleaved
(in a rotating order), and reported as the median; CPU time per
request (or per MiB) of each process (client thread, Traefik, public API, private API) says where the time goes.

- polling: a pending task (answer 551), `--polls` sequential requests on one connection, and the same spread over
  `--concurrency` threads with a connection each;
- upload: a `--size-mib` stored zip posted as a task (multipart, as users do); download: a task's output of that size;
- the public API's peak VmRSS growth over the chain's uploads and downloads (sampled every 5 ms).
Starts a private API (SQLite) and a public API as local processes and Traefik (`TRAEFIK_IMAGE`, default traefik:v3)
in a labelled container on the host network with the compose file's entry point settings; without a Traefik image
the chain is measured without it and the results say so. Prints tables; writes bench/results/public_chain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    MIB,
    ROOT,
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

GOAL_POLL_RATIO = 0.5
GOAL_TRANSFER_RATIO = 0.7
GOAL_RSS_GROWTH_MIB = 64.0
MODEL_HID = "bench"
PATHS = ("direct", "public", "chain")
PATH_NAMES = {
    "direct": "private API directly (HTTP)",
    "public": "public API alone (HTTP)",
    "chain": "Traefik + public API (HTTPS)",
}
LABEL = "inference-bench"


@dataclass
class Processes:
    """The pids whose CPU time is counted (Traefik's when it runs and /proc shows it)."""

    pids: dict[str, int] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process and by this one (the load generator, all its threads)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = {"client": usage.ru_utime + usage.ru_stime}
        for name, pid in self.pids.items():
            try:
                used[name] = cpu_seconds(pid)
            except ProcessLookupError:
                used[name] = 0.0
        return used


def start_traefik(public_port: int, workdir: Path) -> tuple[str, int, ssl.SSLContext] | None:
    """Traefik on the host network in front of the public API, as compose sets it up; None when no image can run."""
    image = os.environ.get("TRAEFIK_IMAGE", "traefik:v3")
    certs = workdir / "certs"
    subprocess.run(
        [str(ROOT / "traefik/certs/generate_self_signed_certs"), "localhost"],
        env={**os.environ, "CERT_DIR": str(certs)},
        check=True,
        capture_output=True,
    )
    dynamic = workdir / "dynamic"
    dynamic.mkdir()
    (dynamic / "bench.yml").write_text(
        "http:\n  routers:\n    public:\n      rule: PathPrefix(`/`)\n      entryPoints: [websecure]\n"
        "      service: public\n      tls: {}\n"
        "  services:\n    public:\n      loadBalancer:\n        servers:\n"
        f"          - url: http://127.0.0.1:{public_port}\n"
        "tls:\n  stores:\n    default:\n      defaultCertificate:\n"
        "        certFile: /certs/cert.crt\n        keyFile: /certs/cert.key\n"
        "  options:\n    default:\n      minVersion: VersionTLS12\n"
    )
    port = free_port()
    name = f"bench-traefik-{uuid.uuid4().hex[:8]}"
    command = [
        "docker",
        "run",
        "-d",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "--label",
        f"{LABEL}=1",
        "-v",
        f"{dynamic}:/dynamic:ro",
        "-v",
        f"{certs}:/certs:ro",
        image,
        # The entry point settings of docker-compose.yaml (access log included: production pays for it too).
        "--global.checknewversion=false",
        "--global.sendanonymoususage=false",
        "--accesslog=true",
        f"--entrypoints.websecure.address=127.0.0.1:{port}",
        "--entrypoints.websecure.http.tls=true",
        "--entrypoints.websecure.transport.respondingtimeouts.readtimeout=0",
        "--entrypoints.websecure.transport.respondingtimeouts.writetimeout=0",
        "--entrypoints.websecure.transport.respondingtimeouts.idletimeout=300s",
        "--providers.file.directory=/dynamic",
        "--log.level=ERROR",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(
            f"Traefik not started ({result.stderr.strip()[:200]}); the chain is the public API alone", file=sys.stderr
        )
        return None
    context = ssl.create_default_context(cafile=str(certs / "cert.crt"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"https://localhost:{port}/healthz", verify=context, timeout=2).status_code == 200:
                return name, port, context
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    raise RuntimeError("Traefik did not route to the public API within 30s")


def traefik_pid(name: str) -> int | None:
    """The host pid of the Traefik container's process, when /proc of this machine shows it."""
    result = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name], capture_output=True, text=True)
    try:
        pid = int(result.stdout.strip())
    except ValueError:
        return None
    return pid if pid > 0 and Path(f"/proc/{pid}/stat").exists() else None


def poll_once(client: httpx.Client, uid: str) -> None:
    """One poll of the pending task; it must answer 551."""
    res = client.get(f"/api/tasks/{uid}")
    if res.status_code != 551:
        raise RuntimeError(f"polling answered {res.status_code}, not 551: {res.text[:200]}")


def poll_sequential(client: httpx.Client, uid: str, polls: int) -> float:
    """Polls per second on one keep-alive connection, one after another."""
    for _ in range(20):
        poll_once(client, uid)
    start = time.perf_counter()
    for _ in range(polls):
        poll_once(client, uid)
    return polls / (time.perf_counter() - start)


def poll_concurrent(make_client: Callable[[], httpx.Client], uid: str, polls: int, threads: int) -> float:
    """Polls per second with `threads` threads, each on its own connection, `polls` in all."""
    clients = [make_client() for _ in range(threads)]
    for client in clients:
        poll_once(client, uid)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def work(client: httpx.Client) -> None:
        barrier.wait()
        try:
            for _ in range(polls // threads):
                poll_once(client, uid)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(client,)) for client in clients]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    for client in clients:
        client.close()
    if errors:
        raise errors[0]
    return (polls // threads) * threads / elapsed


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


def measure(processes: Processes, action: Callable[[], float], units: float) -> tuple[float, dict[str, float]]:
    """Run action (which returns a rate); the rate and each process's CPU milliseconds per unit of work."""
    before = processes.cpu()
    rate = action()
    after = processes.cpu()
    return rate, {name: (after[name] - before[name]) * 1000 / units for name in before}


def summarize(samples: dict[str, list[tuple[float, dict[str, float]]]]) -> dict[str, dict[str, float]]:
    """The median rate of each path and the median CPU cost per process."""
    summary: dict[str, dict[str, float]] = {}
    for path, runs in samples.items():
        names = runs[0][1].keys()
        summary[path] = {"rate": round(median(rate for rate, _ in runs), 1)}
        summary[path].update({f"cpu_ms_{name}": round(median(cpu[name] for _, cpu in runs), 3) for name in names})
    return summary


def rotated(paths: tuple[str, ...], run: int) -> tuple[str, ...]:
    """The paths starting at a different one each run, so that no path always goes first."""
    shift = run % len(paths)
    return paths[shift:] + paths[:shift]


def verdict(ratio: float, goal: float, higher_is_better: bool = True) -> str:
    """'met' or 'missed' against a goal."""
    return "met" if (ratio >= goal if higher_is_better else ratio < goal) else "missed"


def main() -> int:
    """Run the benchmark, print the tables, write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench public_chain", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the uploaded and downloaded zip")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each figure (the median is reported)")
    parser.add_argument("--poll-repeat", type=int, default=7, help="measurements of each polling figure")
    parser.add_argument("--polls", type=int, default=500, help="polls per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="polling threads for the concurrent figure")
    args = parser.parse_args()
    if min(args.size_mib, args.repeat, args.poll_repeat, args.concurrency) < 1 or args.polls < 10:
        parser.error("--size-mib, --repeat, --poll-repeat and --concurrency must be at least 1, --polls at least 10")
    workdir = Path(tempfile.mkdtemp(prefix="bench-public-chain-"))
    # The zip, one stored input and one stored output at a time, with room to spare.
    needed = 4 * args.size_mib * MIB
    if disk_free(workdir) < needed:
        sys.exit(f"need {needed // MIB} MiB free under {workdir} for a {args.size_mib} MiB benchmark")
    token = "bench-internal-token-" + uuid.uuid4().hex
    private = ServerProcess(
        [sys.executable, "-m", "private_api"],
        port=(private_port := free_port()),
        env={
            "HOST": "127.0.0.1",
            "PORT": str(private_port),
            "INTERNAL_TOKEN": token,
            "DATA_DIR": str(workdir / "data"),
            "DATABASE_URL": "",
            "LOG_LEVEL": "WARNING",
            # No broker: tasks stay pending in the outbox, which is what polling needs.
            "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        },
        log_path=workdir / "private_api.log",
    )
    public = ServerProcess(
        [sys.executable, "-m", "public_api"],
        port=(public_port := free_port()),
        env={
            "HOST": "127.0.0.1",
            "PORT": str(public_port),
            "INTERNAL_TOKEN": token,
            "PRIVATE_API_URL": private.url,
            "LOG_LEVEL": "WARNING",
        },
        log_path=workdir / "public_api.log",
    )
    traefik = None
    clients: list[httpx.Client] = []
    try:
        private.wait_healthy(60)
        public.wait_healthy(30)
        traefik = start_traefik(public.port, workdir)
        processes = Processes({"private": private.pid, "public": public.pid})
        if traefik and (pid := traefik_pid(traefik[0])):
            processes.pids["traefik"] = pid

        def make_client(path: str) -> httpx.Client:
            """The same client for every path; only the address (and the token, for the private API) differ."""
            if path == "direct":
                client = httpx.Client(base_url=private.url, headers={"X-Internal-Token": token}, timeout=600)
            elif path == "chain" and traefik:
                client = httpx.Client(base_url=f"https://localhost:{traefik[1]}", verify=traefik[2], timeout=600)
            else:
                client = httpx.Client(base_url=public.url, timeout=600)
            clients.append(client)
            return client

        client = {path: make_client(path) for path in PATHS}
        client["direct"].post(
            "/api/models/", params={"container_tag": "busybox", "human_readable_id": MODEL_HID, "use_gpu": "false"}
        ).raise_for_status()
        small = workdir / "small.zip"
        make_big_zip(small, 64 * 1024)
        pending, _ = upload(client["direct"], small)

        polls: dict[str, list[tuple[float, dict[str, float]]]] = {path: [] for path in PATHS}
        concurrent: dict[str, list[tuple[float, dict[str, float]]]] = {path: [] for path in PATHS}
        for run in range(args.poll_repeat):
            for path in rotated(PATHS, run):
                polls[path].append(
                    measure(processes, partial(poll_sequential, client[path], pending, args.polls), args.polls)
                )
            for path in rotated(PATHS, run):
                concurrent[path].append(
                    measure(
                        processes,
                        partial(poll_concurrent, partial(make_client, path), pending, args.polls, args.concurrency),
                        args.polls,
                    )
                )

        big = workdir / "big.zip"
        size = make_big_zip(big, args.size_mib * MIB)
        size_mib = size / MIB
        uploads: dict[str, list[tuple[float, dict[str, float]]]] = {path: [] for path in PATHS}
        downloads: dict[str, list[tuple[float, dict[str, float]]]] = {path: [] for path in PATHS}
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

                with RssSampler(public.pid) as rss:
                    uploads[path].append(measure(processes, timed_upload, size_mib))
                    downloads[path].append(measure(processes, timed_download, size_mib))
                if path == "chain":
                    growth.append(rss.growth)
                # Free the disk: the stored input is not needed again.
                client["direct"].delete(f"/api/tasks/{uid[0]}").raise_for_status()

        results: dict[str, Any] = {
            "through": "Traefik (HTTPS) + public API" if traefik else "public API (no Traefik image: no TLS)",
            "size_mib": args.size_mib,
            "repeat": args.repeat,
            "poll_repeat": args.poll_repeat,
            "polls": args.polls,
            "concurrency": args.concurrency,
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "poll": summarize(polls),
            "poll_concurrent": summarize(concurrent),
            "upload_mib_s": summarize(uploads),
            "download_mib_s": summarize(downloads),
            "public_api_peak_growth_mib": round(max(growth) / MIB, 1),
        }
        rows = []
        for figure, unit, goal in (
            ("poll", "req/s", GOAL_POLL_RATIO),
            ("poll_concurrent", "req/s", GOAL_POLL_RATIO),
            ("upload_mib_s", "MiB/s", GOAL_TRANSFER_RATIO),
            ("download_mib_s", "MiB/s", GOAL_TRANSFER_RATIO),
        ):
            direct_rate = results[figure]["direct"]["rate"]
            ratio = results[figure]["chain"]["rate"] / direct_rate
            results[figure]["ratio"] = round(ratio, 3)
            results[figure]["goal"] = goal
            label = f"{figure} ({unit})" + (f", {args.concurrency} connections" if figure == "poll_concurrent" else "")
            rows.append(
                (
                    label,
                    direct_rate,
                    results[figure]["public"]["rate"],
                    results[figure]["chain"]["rate"],
                    f"{ratio:.2f}",
                    f">= {goal} {verdict(ratio, goal)}",
                )
            )
        growth_mib = results["public_api_peak_growth_mib"]
        rows.append(
            (
                "public API peak RSS growth (MiB)",
                "",
                "",
                growth_mib,
                "",
                f"< {GOAL_RSS_GROWTH_MIB:g} {verdict(growth_mib, GOAL_RSS_GROWTH_MIB, higher_is_better=False)}",
            )
        )
        print(
            f"\nmedians of {args.poll_repeat} (polls) and {args.repeat} (transfers of {args.size_mib} MiB); "
            f"chain = {results['through']}; load average {results['load_average_at_end'][0]:.1f} "
            f"on {results['cpus']} CPUs at the end\n"
        )
        print_table(("figure", "direct", "public API alone", "chain", "ratio", "goal"), rows)
        print("\nCPU milliseconds per request (polls) or per MiB (transfers), median:\n")
        cpu_rows = []
        for figure in ("poll", "poll_concurrent", "upload_mib_s", "download_mib_s"):
            for path in PATHS:
                cpu = results[figure][path]
                costs = [cpu.get(f"cpu_ms_{name}", "") for name in ("client", "traefik", "public", "private")]
                cpu_rows.append((figure, PATH_NAMES[path], *costs))
        print_table(("figure", "path", "client", "traefik", "public API", "private API"), cpu_rows)
        print(f"\nwrote {write_results('public_chain', results)}")
        return 0
    finally:
        for client_ in clients:
            client_.close()
        if traefik:
            subprocess.run(["docker", "rm", "-f", traefik[0]], capture_output=True)
        public.stop()
        private.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
