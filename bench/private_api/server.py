"""The servers the benchmark talks to: the real private API, the bare FastAPI baseline, and plain copies."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import MIB, ServerProcess, free_port
from bench.private_api.options import MODEL_HID, PENDING_BODY


def bare_app() -> Any:
    """The polling baseline: a bare FastAPI app whose one route answers what the private API answers a pending task."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/api/tasks/{uid}")
    async def poll(uid: str) -> JSONResponse:
        """Always pending."""
        return JSONResponse(PENDING_BODY, status_code=551)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Ready."""
        return {"status": "ok"}

    return app


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def copy_file(src: Path, dst: Path, *, fsync: bool) -> float:
    """Seconds to copy src to dst (and fsync it when asked): the transfer baseline."""

    start = time.perf_counter()
    shutil.copyfile(src, dst)
    if fsync:
        _fsync(dst)
    return time.perf_counter() - start


class PrivateApi:
    """The real private API as a subprocess, and the calls the benchmark makes to it."""

    def __init__(self, workdir: Path, *, max_bytes: int) -> None:
        self.token = "bench-" + secrets.token_hex(16)
        self.data_dir = workdir / "data"
        port = free_port()
        env = {
            "INTERNAL_TOKEN": self.token,
            "DATA_DIR": str(self.data_dir),
            "DATABASE_URL": "",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            # An unreachable broker unless one is given: the API still accepts tasks (they wait in the outbox).
            "RABBITMQ_URL": os.environ.get("RABBITMQ_URL") or f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
            "LOG_LEVEL": "WARNING",
            "MAX_UPLOAD_BYTES": str(max_bytes),
            # The polling measurement keeps 100,000 tasks pending: the queue must not count as full.
            "MAX_QUEUED_TASKS": "10000000",
            "MAX_ZIP_TOTAL_BYTES": str(max_bytes),
        }
        self.server = ServerProcess(
            [sys.executable, "-m", "private_api"], port=port, env=env, log_path=workdir / "private_api.log"
        )
        self.client = httpx.Client(base_url=self.server.url, headers={"X-Internal-Token": self.token}, timeout=600)

    def start(self) -> PrivateApi:
        """Wait until it is ready, and register the benchmark's model."""
        self.server.wait_healthy(60)
        res = self.client.post(
            "/api/models/",
            params={"container_tag": "busybox", "human_readable_id": MODEL_HID, "use_gpu": "false"},
        )
        _expect(res, 200, "register the model")
        self.model_id = int(res.json()["id"])
        return self

    def stop(self) -> None:
        """Close the client and stop the process."""
        self.client.close()
        self.server.stop()

    def upload(self, path: Path) -> str:
        """POST path as a task's input zip; the task uid.

        The multipart body is sent by hand over a plain socket, the file part with sendfile(2): the client then costs
        a few percent of a core instead of httpx's (which reads, frames and sends 64 KiB at a time in Python and takes
        the CPU the server needs on a small machine). The server parses exactly what httpx would send.
        """
        boundary = secrets.token_hex(16)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="zip_file"; filename="{path.name}"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = path.stat().st_size
        request = (
            f"POST /api/tasks/?human_readable_id={MODEL_HID} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-Internal-Token: {self.token}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(head) + size + len(tail)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=600) as sock, path.open("rb") as handle:
            sock.sendall(request + head)
            sock.sendfile(handle)
            sock.sendall(tail)
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        head_lines, _, body = answer.partition(b"\r\n\r\n")
        status = head_lines.split(b" ", 2)[1] if head_lines.startswith(b"HTTP/1.1 ") else b"?"
        if status != b"200":
            raise RuntimeError(f"upload the input zip: POST /api/tasks/ answered {status.decode()}: {body[:300]!r}")
        uid = json.loads(body)
        if not isinstance(uid, str):
            raise RuntimeError(f"upload answered {body[:200]!r}, not a uid")
        return uid

    def claim(self, uid: str) -> None:
        """Claim the task as the consumer `bench`."""
        res = self.client.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "bench", "consumer_name": "bench"})
        _expect(res, 200, "claim the task")

    def put_output(self, uid: str, path: Path) -> None:
        """Upload path as the task's output zip (raw body, streamed from disk)."""
        with path.open("rb") as handle:
            res = self.client.put(
                f"/internal/tasks/{uid}/output",
                params={"consumer_id": "bench", "attempt": 1},
                content=handle,
                headers={"Content-Type": "application/zip"},
            )
        _expect(res, 200, "upload the output zip")

    def finish(self, uid: str) -> None:
        """Mark the task finished with exit code 0."""
        res = self.client.post(
            f"/internal/tasks/{uid}/finish",
            json={"consumer_id": "bench", "attempt": 1, "status": "finished", "exit_code": 0},
        )
        _expect(res, 200, "finish the task")

    def download(self, uid: str, dest: Path) -> int:
        """GET the task's output zip into dest; its size."""
        size = 0
        with self.client.stream("GET", f"/api/tasks/{uid}") as res, dest.open("wb") as out:
            if res.status_code != 200:
                res.read()
                _expect(res, 200, "download the output zip")
            for chunk in res.iter_raw(MIB):
                out.write(chunk)
                size += len(chunk)
        return size

    def delete(self, uid: str) -> None:
        """Cancel the task and delete its files."""
        _expect(self.client.delete(f"/api/tasks/{uid}"), 200, "delete the task")

    def insert_pending_tasks(self, count: int) -> tuple[list[str], float]:
        """Bulk-insert count published, pending tasks of the benchmark's model; their uids and the seconds it took."""
        from sqlalchemy import insert

        from private_api.db import make_engine
        from private_api.orm import Task

        engine = make_engine(f"sqlite:///{self.data_dir / 'inference.sqlite3'}")
        now = datetime.now(UTC)
        uids = [secrets.token_urlsafe(24) for _ in range(count)]
        start = time.perf_counter()
        try:
            with engine.begin() as connection:
                for first in range(0, count, 10_000):
                    rows = [
                        {
                            "uid": uid,
                            "model_id": self.model_id,
                            "model_hid": MODEL_HID,
                            "use_gpu": False,
                            "owner": None,
                            "status": "pending",
                            "deleted": False,
                            "attempt": 0,
                            "input_size": 0,
                            "input_sha256": "",
                            "created_at": now,
                            "published_at": now,
                        }
                        for uid in uids[first : first + 10_000]
                    ]
                    connection.execute(insert(Task), rows)
        finally:
            engine.dispose()
        return uids, time.perf_counter() - start


def _expect(res: httpx.Response, status: int, what: str) -> None:
    """RuntimeError naming the step when the answer is not status."""
    if res.status_code != status:
        raise RuntimeError(
            f"{what}: {res.request.method} {res.request.url.path} answered {res.status_code}: {res.text[:300]}"
        )
