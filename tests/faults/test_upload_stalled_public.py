"""Fault: 20 uploads through the public API send their headers, then nothing (a slow link, or an attacker).

Real processes: the private API (`python -m private_api`, SQLite) and the public API (`python -m public_api`) in
front of it. While the stalled uploads are open, polls through the public API answer in well under a second and a
normal upload is accepted; after UPLOAD_IDLE_TIMEOUT_SECONDS each stalled upload is answered 408 and leaves nothing.
"""

from __future__ import annotations

import json
import socket
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import pytest

from tests.public_relay.servers import ProcessServer, free_port, read_answer, stalled_upload

TOKEN = "stalled-public-token-0123456789abcdef"
IDLE_SECONDS = 4
STALLED = 20
MODEL = "stall-m"
# Headers, and for half of them the start of the multipart file part too: the private API is inside its upload loop.
PART_HEAD = b'--stalled\r\nContent-Disposition: form-data; name="zip_file"; filename="i.zip"\r\n\r\nPK\x03\x04'


@dataclass
class Chain:
    """The running chain: the public API's and the private API's URLs and the private API's data folder."""

    public: str
    private: str
    data: Path


def _zip() -> bytes:
    """A small valid input zip."""
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", b"1")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """Both APIs as processes, with a short upload idle timeout; no broker, so tasks stay pending."""
    data = tmp_path_factory.mktemp("stalled-private-data")
    idle = {"UPLOAD_IDLE_TIMEOUT_SECONDS": str(IDLE_SECONDS), "INTERNAL_TOKEN": TOKEN, "LOG_LEVEL": "WARNING"}
    private_env = {
        **idle,
        "DATA_DIR": str(data),
        "DATABASE_URL": "",
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        "MIN_FREE_DISK_BYTES": "1048576",
    }
    private = ProcessServer("private_api", private_env, free_port()).wait_ready(timeout=60)
    # Fewer connections for calls than there are stalled uploads: were the uploads to take them, polls would wait.
    public_env = {
        **idle,
        "PRIVATE_API_URL": private.url,
        "ALLOW_PUBLIC_POST_MODEL": "1",
        "PRIVATE_API_MAX_CONNECTIONS": str(STALLED // 2),
        "PRIVATE_API_POOL_TIMEOUT": "2",
    }
    public = ProcessServer("public_api", public_env, free_port()).wait_ready(timeout=60)
    yield Chain(public=public.url, private=private.url, data=data)
    public.stop()
    private.stop()


def _timed(client: httpx.Client, path: str) -> tuple[int, float]:
    """The status of a GET and how long it took."""
    started = time.monotonic()
    status = client.get(path).status_code
    return status, time.monotonic() - started


def test_stalled_uploads_through_the_public_api_hold_nothing_shared(chain: Chain):
    with httpx.Client(base_url=chain.public, timeout=30) as client:
        model = {"container_tag": "busybox", "human_readable_id": MODEL, "use_gpu": "false"}
        assert client.post("/api/models/", params=model).status_code == 200
        files = {"zip_file": ("i.zip", _zip(), "application/zip")}
        first = client.post("/api/tasks/", params={"human_readable_id": MODEL}, files=files)
        assert first.status_code == 200, first.text
        uid = json.loads(first.content)

        path = f"/api/tasks/?human_readable_id={MODEL}"
        stalled: list[socket.socket] = [
            stalled_upload(chain.public, path, sent=PART_HEAD if n % 2 else b"") for n in range(STALLED)
        ]
        try:
            time.sleep(1.0)
            polls = [_timed(client, f"/api/tasks/{uid}") for _ in range(10)]
            polls += [_timed(client, f"/api/tasks/{uid}/status") for _ in range(10)]
            polls.append(_timed(client, "/api/models/"))
            assert [status for status, _ in polls] == [551] * 10 + [200] * 11
            slowest = max(seconds for _, seconds in polls)
            assert slowest < 1.0, f"a poll took {slowest:.2f}s with {STALLED} stalled uploads open"
            second = client.post("/api/tasks/", params={"human_readable_id": MODEL}, files=files)
            assert second.status_code == 200, second.text

            answers = []
            for sock in stalled:
                sock.settimeout(IDLE_SECONDS + 20)
                answers.append(read_answer(sock))
        finally:
            for sock in stalled:
                sock.close()
        assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), {a[:40] for a in answers}

        # Nothing of the stalled uploads was kept: two tasks, two input files, no leftover temp file.
        private = httpx.get(f"{chain.private}/api/tasks/", headers={"X-Internal-Token": TOKEN}, timeout=10)
        assert private.json()["total"] == 2
        assert len(list((chain.data / "inputs").iterdir())) == 2
        time.sleep(0.5)
        assert not [p for p in (chain.data / "tmp").rglob("*") if p.is_file()]
        assert client.get(f"/api/tasks/{uid}").status_code == 551
