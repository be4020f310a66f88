"""Fault: DATA_DIR goes read-only (a tmpfs remounted `ro`) while the retention sweeper has files to remove.

The sweeper keeps running and says why in its last error, marks nothing it could not remove (the status never claims
a file is gone while it is on disk), the API keeps serving (status, logs, an expired output answers 553 "expired"
from its deadline on), and once the disk is writable again the next round removes the files and marks the tasks.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from private_api.config import Settings
from private_api.main import create_app
from private_api.orm import Task
from private_api.retention import Sweeper
from tests.private_api.conftest import AUTH, TOKEN
from tests.private_api.helpers import add_model, make_zip, submit


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs, unmounted at the end (skips where this process may not mount)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True, capture_output=True)


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sweeper_on_a_read_only_disk_keeps_serving_and_catches_up(
    disk: Path, tmp_path: Path, rabbitmq_url: str, purge_queues: None
) -> None:
    database = f"sqlite:///{tmp_path / 'db.sqlite3'}"  # the database stays writable: only DATA_DIR's disk fails
    settings = Settings(
        internal_token=TOKEN,
        data_dir=disk,
        database_url=database,
        rabbitmq_url=rabbitmq_url,
        outbox_interval_seconds=0.2,
        retention_interval_seconds=0.1,
        input_retention_seconds=1.0,  # the finish lands the output: the disk goes read-only just after it
        output_retention_seconds=2.0,
        min_free_disk_bytes=0,
    )
    engine = sa.create_engine(database)

    def row(uid: str) -> tuple[object, object]:
        with engine.connect() as connection:
            query = sa.select(Task.input_removed_at, Task.output_expired_at).where(Task.uid == uid)
            removed, expired = connection.execute(query).one()
            return removed, expired

    files = [disk / "inputs" / "{}.zip", disk / "outputs" / "{}.zip", disk / "logs" / "{}.log"]
    with TestClient(create_app(settings), headers=AUTH) as api:
        sweeper: Sweeper = api.app.state.sweeper  # type: ignore[attr-defined]
        add_model(api, "m")
        uid = submit(api, "m")
        holder = {"consumer_id": "c1", "attempt": 1}
        assert api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "c1"}).status_code == 200
        assert api.put(f"/internal/tasks/{uid}/output", params=holder, content=make_zip()).status_code == 200
        assert api.put(f"/internal/tasks/{uid}/logs", params=holder, content=b"log\n").status_code == 200
        assert api.post(f"/internal/tasks/{uid}/finish", json={**holder, "status": "finished"}).status_code == 200
        _remount(disk, "ro")
        try:
            _wait_for(lambda: "Read-only" in (sweeper.last_error or ""))
            rounds = sweeper.rounds
            _wait_for(lambda: sweeper.rounds >= rounds + 3)
            assert sweeper.alive
            assert all(Path(str(path).format(uid)).exists() for path in files)
            assert row(uid) == (None, None)  # nothing is marked gone while it is on disk
            status = api.get(f"/api/tasks/{uid}/status")
            assert status.status_code == 200 and status.json()["status"] == "finished"
            assert api.get(f"/api/tasks/{uid}/logs").text == "log\n"
            _wait_for(lambda: api.get(f"/api/tasks/{uid}").status_code == 553)
            assert "expired" in api.get(f"/api/tasks/{uid}").json()["detail"]
            assert api.get("/healthz").status_code == 200
        finally:
            _remount(disk, "rw")
        _wait_for(lambda: not any(Path(str(path).format(uid)).exists() for path in files))
        _wait_for(lambda: None not in row(uid))
        _wait_for(lambda: sweeper.last_error is None)
    engine.dispose()
