"""Fault: 40 uploads send their headers and then stall (a slow link, or anyone on the internet).

Polls and consumer calls still answer in well under a second and a normal upload is accepted, because no upload holds
a database connection while its body streams; after UPLOAD_IDLE_TIMEOUT_SECONDS each stalled upload is dropped with
408 and leaves no file.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import time
from collections.abc import Iterator

import httpx

from private_api.config import Settings
from tests.private_api.conftest import AUTH, TOKEN, LiveServer
from tests.private_api.helpers import make_zip

STALLED = 40


def _stalled_upload(port: int, path: str) -> socket.socket:
    """A connection that sent the headers and the start of a multipart body, and then nothing."""
    start = b'--xx\r\nContent-Disposition: form-data; name="zip_file"; filename="a.zip"\r\n\r\nPK\x03\x04'
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Internal-Token: {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: {len(start) + 4_000_000}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head + start)
    return sock


@contextlib.contextmanager
def _stall(port: int) -> Iterator[list[socket.socket]]:
    """STALLED stalled uploads, half task inputs, half model zips; closed at the end."""
    paths = ["/api/tasks?human_readable_id=m", "/api/models?container_tag=busybox&human_readable_id=late"]
    sockets = [_stalled_upload(port, paths[i % 2]) for i in range(STALLED)]
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _timed(client: httpx.Client, method: str, path: str) -> tuple[float, int]:
    start = time.perf_counter()
    response = client.request(method, path)
    return time.perf_counter() - start, response.status_code


def test_stalled_uploads_hold_nothing_shared(live: LiveServer, settings: Settings) -> None:
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=10) as client:
        client.post("/api/models", params={"container_tag": "busybox", "human_readable_id": "m", "use_gpu": False})
        before = client.post("/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("a.zip", make_zip())})
        uid = before.json()
        with _stall(live.port):
            time.sleep(1.0)  # every stalled upload has reached its route and waits for the body
            times = []
            for _ in range(10):
                for method, path in [
                    ("GET", f"/api/tasks/{uid}"),  # a poll: 551 pending
                    ("GET", f"/api/tasks/{uid}/status"),
                    ("GET", f"/internal/tasks/{uid}/input"),  # what a consumer calls
                    ("GET", "/api/models"),
                ]:
                    seconds, status = _timed(client, method, path)
                    assert status in (200, 551), (path, status)
                    times.append(seconds)
            assert max(times) < 1.0, times
            assert statistics.median(times) < 0.25, times
            accepted = client.post(
                "/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("b.zip", make_zip())}
            )
            assert accepted.status_code == 200, accepted.text
            assert client.get(f"/api/tasks/{accepted.json()}").status_code == 551


def test_idle_uploads_are_dropped_with_408_and_leave_nothing(settings: Settings) -> None:
    quick = settings.model_copy(update={"upload_idle_timeout_seconds": 1.5})
    with LiveServer(quick) as server, httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
        client.post("/api/models", params={"container_tag": "busybox", "human_readable_id": "m", "use_gpu": False})
        with _stall(server.port) as sockets:
            deadline = time.monotonic() + 20
            answers = []
            for sock in sockets:
                sock.settimeout(max(deadline - time.monotonic(), 0.1))
                answers.append(sock.recv(200))
            assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:3]
            assert b"sent nothing for 1.5 seconds" in answers[0]
        assert client.get("/api/tasks").json()["total"] == 0
        assert [m["human_readable_id"] for m in client.get("/api/models").json()] == ["m"]
    assert list((quick.data_dir / "tmp").iterdir()) == []
    assert list((quick.data_dir / "inputs").iterdir()) == []
    assert list((quick.data_dir / "models").iterdir()) == []
