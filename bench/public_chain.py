"""Benchmark the public chain (Traefik -> public API -> private API) against the private API directly.

Run: `python -m bench.public_chain [--size-mib 1024] [--polls 500]`. Starts a private API (SQLite) and a public API
as local processes and, when TRAEFIK_IMAGE (or `traefik:v3`) can run, Traefik in a container on the host network
with the compose file's entry point settings. Prints a markdown table; writes bench/results/public_chain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.public_relay.servers import ProcessServer, free_port  # noqa: E402

TOKEN = "bench-internal-token-" + uuid.uuid4().hex
CHUNK = 1024 * 1024


def make_zip(path: Path, size: int) -> None:
    """A stored (uncompressed) zip of `size` random-ish bytes, written without holding it in memory."""
    block = os.urandom(CHUNK)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive,
        archive.open("volume.bin", "w", force_zip64=True) as entry,
    ):
        for _ in range(size // CHUNK):
            entry.write(block)


def start_traefik(public_port: int, workdir: Path) -> tuple[str, int, ssl.SSLContext] | None:
    """Traefik on the host network in front of the public API; None when no Traefik image can run."""
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
        f"  services:\n    public:\n      loadBalancer:\n        servers:\n"
        f"          - url: http://127.0.0.1:{public_port}\n"
        "tls:\n  stores:\n    default:\n      defaultCertificate:\n"
        "        certFile: /certs/cert.crt\n        keyFile: /certs/cert.key\n"
    )
    port = free_port()
    name = f"bench-traefik-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "--network",
            "host",
            "--label",
            "inference-bench=1",
            "-v",
            f"{dynamic}:/dynamic:ro",
            "-v",
            f"{certs}:/certs:ro",
            image,
            f"--entrypoints.websecure.address=:{port}",
            "--entrypoints.websecure.http.tls=true",
            "--entrypoints.websecure.transport.respondingtimeouts.readtimeout=0",
            "--entrypoints.websecure.transport.respondingtimeouts.writetimeout=0",
            "--providers.file.directory=/dynamic",
            "--log.level=ERROR",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        print(f"Traefik not started ({result.stderr.strip()[:200]}); measuring the public API alone", file=sys.stderr)
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


def poll_rate(client: httpx.Client, uid: str, polls: int) -> float:
    """Polls per second of one pending task on one keep-alive connection."""
    for _ in range(20):
        client.get(f"/api/tasks/{uid}")
    start = time.perf_counter()
    for _ in range(polls):
        assert client.get(f"/api/tasks/{uid}").status_code == 551
    return polls / (time.perf_counter() - start)


def upload(client: httpx.Client, path: Path) -> tuple[str, float]:
    """Post the zip as a task; its uid and MiB/s."""
    start = time.perf_counter()
    with path.open("rb") as handle:
        res = client.post("/api/tasks/", params={"human_readable_id": "bench"}, files={"zip_file": ("in.zip", handle)})
    res.raise_for_status()
    return json.loads(res.content), path.stat().st_size / CHUNK / (time.perf_counter() - start)


def download(client: httpx.Client, uid: str) -> float:
    """Fetch a task's output; MiB/s."""
    start = time.perf_counter()
    size = 0
    with client.stream("GET", f"/api/tasks/{uid}") as res:
        assert res.status_code == 200, res.status_code
        for chunk in res.iter_raw(CHUNK):
            size += len(chunk)
    return size / CHUNK / (time.perf_counter() - start)


def finish_with_output(direct: httpx.Client, uid: str, path: Path) -> None:
    """Act as a consumer: claim the task, upload `path` as its output, finish it."""
    headers = {"X-Internal-Token": TOKEN}
    direct.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "bench"}, headers=headers).raise_for_status()
    with path.open("rb") as handle:
        direct.put(
            f"/internal/tasks/{uid}/output",
            content=handle,
            headers={**headers, "Content-Type": "application/zip"},
        ).raise_for_status()
    direct.post(
        f"/internal/tasks/{uid}/finish", json={"consumer_id": "bench", "status": "finished"}, headers=headers
    ).raise_for_status()


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--polls", type=int, default=500)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-public-"))
    private = ProcessServer(
        "private_api",
        {
            "INTERNAL_TOKEN": TOKEN,
            "DATA_DIR": str(workdir / "data"),
            "DATABASE_URL": "",
            "LOG_LEVEL": "WARNING",
            "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        },
        free_port(),
    ).wait_ready(60)
    public = ProcessServer(
        "public_api",
        {
            "INTERNAL_TOKEN": TOKEN,
            "PRIVATE_API_URL": private.url,
            "LOG_LEVEL": "WARNING",
        },
        free_port(),
    ).wait_ready(30)
    traefik = None
    try:
        traefik = start_traefik(public.port, workdir)
        direct = httpx.Client(base_url=private.url, headers={"X-Internal-Token": TOKEN}, timeout=600)
        if traefik:
            chain = httpx.Client(base_url=f"https://localhost:{traefik[1]}", verify=traefik[2], timeout=600)
        else:
            chain = httpx.Client(base_url=public.url, timeout=600)
        direct.post(
            "/api/models/", params={"container_tag": "busybox", "human_readable_id": "bench"}
        ).raise_for_status()
        small = workdir / "small.zip"
        make_zip(small, CHUNK)
        pending, _ = upload(direct, small)
        poll_direct = poll_rate(direct, pending, args.polls)
        poll_chain = poll_rate(chain, pending, args.polls)

        big = workdir / "big.zip"
        make_zip(big, args.size_mib * CHUNK)
        baseline = public.rss_bytes()
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], public.rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        uid_direct, up_direct = upload(direct, big)
        uid_chain, up_chain = upload(chain, big)
        finish_with_output(direct, uid_chain, big)
        down_direct = download(direct, uid_chain)
        down_chain = download(chain, uid_chain)
        done.set()
        sampler.join()
        results = {
            "through": "traefik + public API" if traefik else "public API (no Traefik image)",
            "size_mib": args.size_mib,
            "poll_per_s_direct": round(poll_direct, 1),
            "poll_per_s_chain": round(poll_chain, 1),
            "poll_ratio": round(poll_chain / poll_direct, 3),
            "upload_mib_s_direct": round(up_direct, 1),
            "upload_mib_s_chain": round(up_chain, 1),
            "upload_ratio": round(up_chain / up_direct, 3),
            "download_mib_s_direct": round(down_direct, 1),
            "download_mib_s_chain": round(down_chain, 1),
            "download_ratio": round(down_chain / down_direct, 3),
            "public_api_peak_growth_mib": round((peak[0] - baseline) / CHUNK, 1),
        }
        del uid_direct
        out = ROOT / "bench/results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "public_chain.json").write_text(json.dumps(results, indent=2))
        print("| figure | value |\n|---|---|")
        for key, value in results.items():
            print(f"| {key} | {value} |")
    finally:
        if traefik:
            subprocess.run(["docker", "rm", "-f", traefik[0]], capture_output=True)
        public.stop()
        private.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
