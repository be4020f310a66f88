"""The stack under test: the private API, the public API and Traefik, the clients of each path, their CPU time."""

from __future__ import annotations

import os
import resource
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import ROOT, ServerProcess, cpu_seconds, free_port
from bench.public_chain.options import LABEL

# Traefik's container name, its HTTPS port, and the TLS context that trusts its certificate.
Traefik = tuple[str, int, ssl.SSLContext]


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


def start_traefik(public_port: int, workdir: Path) -> Traefik | None:
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


def private_api_server(workdir: Path, token: str) -> ServerProcess:
    """The private API (SQLite, no broker), not started yet."""
    return ServerProcess(
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


def public_api_server(workdir: Path, token: str, private_url: str) -> ServerProcess:
    """The public API relaying to the private API at private_url, not started yet."""
    return ServerProcess(
        [sys.executable, "-m", "public_api"],
        port=(public_port := free_port()),
        env={
            "HOST": "127.0.0.1",
            "PORT": str(public_port),
            "INTERNAL_TOKEN": token,
            "PRIVATE_API_URL": private_url,
            "LOG_LEVEL": "WARNING",
        },
        log_path=workdir / "public_api.log",
    )


@dataclass
class Clients:
    """Makes the client of each path and closes every client it made."""

    private: ServerProcess
    public: ServerProcess
    token: str
    traefik: Traefik | None
    made: list[httpx.Client] = field(default_factory=list)

    def make(self, path: str) -> httpx.Client:
        """The same client for every path; only the address (and the token, for the private API) differ."""
        if path == "direct":
            client = httpx.Client(base_url=self.private.url, headers={"X-Internal-Token": self.token}, timeout=600)
        elif path == "chain" and self.traefik:
            client = httpx.Client(base_url=f"https://localhost:{self.traefik[1]}", verify=self.traefik[2], timeout=600)
        else:
            client = httpx.Client(base_url=self.public.url, timeout=600)
        self.made.append(client)
        return client

    def close(self) -> None:
        """Close every client made so far."""
        for client in self.made:
            client.close()
