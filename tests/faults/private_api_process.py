"""The private API as a real process (`python -m private_api`), to kill and start again in fault tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.private_api.conftest import AUTH, TOKEN

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateApiProcess:
    """`python -m private_api` on a fixed port with the given settings; start, kill and start again."""

    def __init__(self, *, data_dir: Path, database_url: str, rabbitmq_url: str, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "INTERNAL_TOKEN": TOKEN,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": database_url,
            "RABBITMQ_URL": rabbitmq_url,
            "LOG_LEVEL": "WARNING",
            **{name.upper(): value for name, value in settings.items()},
        }
        self.log = data_dir.parent / "private-api.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> float:
        """Start the process and wait until /healthz answers; the moment it answered first (time.monotonic)."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "private_api"], cwd=REPO, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the private API exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the private API did not start: {self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process with sig (SIGKILL: a crash; SIGTERM: an upgrade) and wait for it to end."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
        self.process = None

    def client(self) -> httpx.Client:
        """A client of this API with the internal token."""
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=30)
