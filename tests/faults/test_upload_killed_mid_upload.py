"""Fault: the private API process is killed (SIGKILL: power cut, OOM killer) while an upload streams.

After a restart there is no partial file anywhere under DATA_DIR, no task for the cut upload, the task accepted
before the kill is still there, and uploads work again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.private_api.conftest import AUTH, TOKEN
from tests.private_api.helpers import make_zip

MIB = 1024**2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _private_api(data_dir: Path, rabbitmq_url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m private_api` as a process, ready once /healthz answers; killed at the end if still running."""
    env = {
        **os.environ,
        "INTERNAL_TOKEN": TOKEN,
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": "",
        "RABBITMQ_URL": rabbitmq_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        # A start removes temp files idle for twice this long (a live upload of another instance is never idle).
        "UPLOAD_IDLE_TIMEOUT_SECONDS": "1",
    }
    process = subprocess.Popen([sys.executable, "-m", "private_api"], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private API did not start")
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def _files(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file() and "sqlite" not in p.name)


def test_kill_mid_upload_leaves_no_partial_file(tmp_path: Path, rabbitmq_url: str, purge_queues: None) -> None:
    data_dir = tmp_path / "data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with _private_api(data_dir, rabbitmq_url, port) as process:
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
            client.post("/api/models", params={"container_tag": "busybox", "human_readable_id": "m", "use_gpu": False})
            kept = client.post(
                "/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("a.zip", make_zip())}
            )
            assert kept.status_code == 200, kept.text
        body = b'--kk\r\nContent-Disposition: form-data; name="zip_file"; filename="a.zip"\r\n\r\n' + os.urandom(
            12 * MIB
        )
        head = (
            f"POST /api/tasks?human_readable_id=m HTTP/1.1\r\nHost: x\r\nX-Internal-Token: {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary=kk\r\nContent-Length: {len(body) + 100 * MIB}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + body)
            deadline = time.monotonic() + 20
            while not any(p.stat().st_size > 0 for p in (data_dir / "tmp").glob("*.part")):
                assert time.monotonic() < deadline, "the upload never reached the disk"
                time.sleep(0.05)
            process.send_signal(signal.SIGKILL)  # mid-upload, with part of the file written
            process.wait(timeout=30)
        assert list((data_dir / "tmp").glob("*.part")), "the kill came after the upload ended"
        time.sleep(2.5)  # the cut upload's file is now idle for longer than two UPLOAD_IDLE_TIMEOUT_SECONDS

    with _private_api(data_dir, rabbitmq_url, port), httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        uid = kept.json()
        assert _files(data_dir) == [f"inputs/{uid}.zip"]
        tasks = client.get("/api/tasks").json()
        assert [t["uid"] for t in tasks["items"]] == [uid]
        again = client.post("/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("b.zip", make_zip())})
        assert again.status_code == 200, again.text
        assert client.get(f"/api/tasks/{again.json()}").status_code == 551
