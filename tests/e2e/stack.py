"""A whole compose project on this docker engine, driven like an operator would: up, down, up again, down -v."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Base images: the official ones unless stand-ins are named (see .ci/standin.env).
BASE_IMAGE_VARIABLES = ("PYTHON_IMAGE", "RABBITMQ_IMAGE", "POSTGRES_IMAGE", "TRAEFIK_IMAGE")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """One compose project: its name, its .env file, and its published HTTPS port."""

    project: str
    env_file: Path
    https_port: int

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `docker compose` for this project; on failure the error carries compose's output."""
        command = ["docker", "compose", "-p", self.project, "--env-file", str(self.env_file), *args]
        env = {k: v for k, v in os.environ.items() if k != "COMPOSE_FILE" and k != "COMPOSE_PROFILES"}
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def up(self, *extra: str) -> None:
        """Start (and build) the stack and wait until every healthcheck passes."""
        self.compose("up", "-d", "--wait", "--wait-timeout", "240", *extra)

    def logs(self) -> str:
        """The last lines of every service's logs (for failure messages)."""
        return self.compose("logs", "--no-color", "--tail", "60", check=False, timeout=60).stdout

    @property
    def url(self) -> str:
        """The stack's public HTTPS address."""
        return f"https://localhost:{self.https_port}"


def traefik_certs(folder: Path) -> Path:
    """Traefik's folder for a test stack: the routing and TLS files as shipped, and a certificate of its own."""
    certs = folder / "certs"
    certs.mkdir()
    for name in ("routes.yml", "tls.yml"):
        shutil.copy(ROOT / "traefik/certs" / name, certs / name)
    subprocess.run(
        [str(ROOT / "traefik/certs/generate_self_signed_certs"), "localhost"],
        env={**os.environ, "CERT_DIR": str(certs)},
        check=True,
        capture_output=True,
    )
    return certs
