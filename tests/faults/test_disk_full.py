"""Fault: the disk under DATA_DIR fills up (a small tmpfs holds DATA_DIR and the SQLite database).

Below MIN_FREE_DISK_BYTES uploads answer 507 with a message and Retry-After; a disk that runs full during an upload
(ENOSPC) answers 507 too; no partial file is kept, and once space is freed uploads work again without a restart.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from private_api.config import Settings
from tests.private_api.conftest import AUTH, TOKEN, LiveServer
from tests.private_api.helpers import make_zip

MIB = 1024**2
DISK_MIB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MIB tmpfs, unmounted at the end (skips where this process may not mount)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _chunked(size: int) -> Iterator[bytes]:
    """A multipart body of a size-byte zip_file, sent without Content-Length."""
    yield b'--bb\r\nContent-Disposition: form-data; name="zip_file"; filename="a.zip"\r\n\r\n'
    for _ in range(size // MIB):
        yield os.urandom(MIB)
    yield b"\r\n--bb--\r\n"


def _upload_streamed(client: httpx.Client, size: int) -> httpx.Response:
    return client.post(
        "/api/tasks",
        params={"human_readable_id": "m"},
        content=_chunked(size),
        headers={"Content-Type": "multipart/form-data; boundary=bb"},
    )


def _nothing_partial(data_dir: Path) -> None:
    assert list((data_dir / "tmp").iterdir()) == []
    assert list((data_dir / "inputs").iterdir()) == []


def _settings(data_dir: Path, rabbitmq_url: str, *, min_free_disk_bytes: int) -> Settings:
    """A private API storing its data on the small disk."""
    return Settings(
        internal_token=TOKEN,
        data_dir=data_dir,
        rabbitmq_url=rabbitmq_url,
        outbox_interval_seconds=0.2,
        max_upload_bytes=64 * MIB,
        min_free_disk_bytes=min_free_disk_bytes,
    )


def _full_answer(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text
    assert "disk" in response.json()["detail"]
    assert int(response.headers["retry-after"]) > 0


def test_full_disk_answers_507_keeps_nothing_and_recovers(
    small_disk: Path, rabbitmq_url: str, purge_queues: None
) -> None:
    data_dir = small_disk / "data"
    settings = _settings(data_dir, rabbitmq_url, min_free_disk_bytes=4 * MIB)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        client.post("/api/models", params={"container_tag": "busybox", "human_readable_id": "m", "use_gpu": False})
        files = {"zip_file": ("a.zip", make_zip())}

        # Below MIN_FREE_DISK_BYTES: refused before anything is written.
        ballast = small_disk / "ballast"
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        ballast.write_bytes(b"\0" * (free - 2 * MIB))
        _full_answer(client.post("/api/tasks", params={"human_readable_id": "m"}, files=files))
        _nothing_partial(data_dir)

        # Space comes back: the same upload is accepted, no restart needed.
        ballast.unlink()
        accepted = client.post("/api/tasks", params={"human_readable_id": "m"}, files=files)
        assert accepted.status_code == 200, accepted.text
        assert client.get(f"/api/tasks/{accepted.json()}").status_code == 551

        # A streamed upload larger than the disk: it crosses MIN_FREE_DISK_BYTES on the way.
        _full_answer(_upload_streamed(client, 2 * DISK_MIB * MIB))
        assert list((data_dir / "tmp").iterdir()) == []
        assert client.get("/api/tasks").json()["total"] == 1
    assert len(list((data_dir / "inputs").iterdir())) == 1


def test_enospc_mid_upload_answers_507_and_keeps_nothing(
    small_disk: Path, rabbitmq_url: str, purge_queues: None
) -> None:
    data_dir = small_disk / "data"
    settings = _settings(data_dir, rabbitmq_url, min_free_disk_bytes=0)  # no margin: the file system says ENOSPC
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        client.post("/api/models", params={"container_tag": "busybox", "human_readable_id": "m", "use_gpu": False})
        _full_answer(_upload_streamed(client, 2 * DISK_MIB * MIB))
        _nothing_partial(data_dir)
        accepted = client.post(
            "/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("a.zip", make_zip())}
        )
        assert accepted.status_code == 200, accepted.text
        assert client.get(f"/api/tasks/{accepted.json()}").status_code == 551
