"""Retention on SQLite and PostgreSQL: inputs go when a task ends, outputs after OUTPUT_RETENTION_SECONDS (then the
poll answers 553 "expired"), a deleted task's files and a late upload go within a sweep, several instances sweep one
DATA_DIR without stepping on each other."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from private_api import retention
from private_api.config import Settings
from private_api.main import create_app
from private_api.orm import Task
from private_api.retention import ORPHAN_GRACE, Sweeper
from tests.private_api.conftest import AUTH
from tests.private_api.helpers import add_model, make_zip, submit

INTERVAL = 0.1


def _retained(settings: Settings, **values: float) -> Settings:
    return settings.model_copy(update={"retention_interval_seconds": INTERVAL, **values})


@contextmanager
def _app(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _run(api: TestClient, *, status: str = "finished", output: bytes | None = None, log: str = "") -> str:
    """Submit a task and take it to its end as a consumer would: output and log stored, then finish."""
    uid = submit(api, "m")
    holder = {"consumer_id": "c1", "attempt": 1}
    assert api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "c1"}).status_code == 200
    if output is not None:
        assert api.put(f"/internal/tasks/{uid}/output", params=holder, content=output).status_code == 200
    if log:
        assert api.put(f"/internal/tasks/{uid}/logs", params=holder, content=log.encode()).status_code == 200
    body = {**holder, "status": status, "reason": None if status == "finished" else "exit 3"}
    assert api.post(f"/internal/tasks/{uid}/finish", json=body).status_code == 200
    return uid


def _row(settings: Settings, uid: str) -> Any:
    engine = sa.create_engine(settings.db_url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.select(Task).where(Task.uid == uid)).first()
    finally:
        engine.dispose()


def _files(settings: Settings, uid: str) -> dict[str, bool]:
    root = settings.data_dir
    return {
        "input": (root / "inputs" / f"{uid}.zip").exists(),
        "output": (root / "outputs" / f"{uid}.zip").exists(),
        "log": (root / "logs" / f"{uid}.log").exists(),
    }


def test_input_goes_at_the_end_output_after_retention_then_553_expired(settings: Settings) -> None:
    settings = _retained(settings, output_retention_seconds=2.5)
    with _app(settings) as api:
        add_model(api, "m")
        uid = _run(api, output=make_zip({"seg.txt": "ok"}), log="done\n")
        _wait_for(lambda: not _files(settings, uid)["input"])
        _wait_for(lambda: _row(settings, uid).input_removed_at is not None)  # marked once the file is gone
        status = api.get(f"/api/tasks/{uid}/status").json()
        finished = datetime.fromisoformat(status["finished_at"])
        assert datetime.fromisoformat(status["expires_at"]) == finished + timedelta(seconds=2.5)
        assert api.get(f"/api/tasks/{uid}").status_code == 200  # kept until it expires
        assert _files(settings, uid) == {"input": False, "output": True, "log": True}

        _wait_for(lambda: not _files(settings, uid)["output"])
        answer = api.get(f"/api/tasks/{uid}")
        assert answer.status_code == 553, answer.text
        assert "expired" in answer.json()["detail"]
        assert answer.json()["expired_at"][:19] in answer.json()["detail"]
        _wait_for(lambda: _row(settings, uid).output_expired_at is not None)
        assert _files(settings, uid) == {"input": False, "output": False, "log": False}
        assert api.get(f"/api/tasks/{uid}/logs").text == ""
        status = api.get(f"/api/tasks/{uid}/status").json()
        assert status["status"] == "finished" and status["expires_at"] is not None


def test_an_expired_output_answers_553_before_the_sweeper_comes(settings: Settings) -> None:
    settings = _retained(settings, output_retention_seconds=0.5)
    settings = settings.model_copy(update={"retention_interval_seconds": 3600})
    with _app(settings) as api:
        add_model(api, "m")
        uid = _run(api, output=make_zip())
        time.sleep(0.6)
        assert _files(settings, uid)["output"]  # not swept yet
        answer = api.get(f"/api/tasks/{uid}")
        assert answer.status_code == 553 and "expired" in answer.json()["detail"]


def test_input_retention_keeps_the_input_and_pending_tasks_keep_theirs(settings: Settings) -> None:
    settings = _retained(settings, input_retention_seconds=3600)
    with _app(settings) as api:
        add_model(api, "m")
        ended = _run(api, status="failed", log="boom\n")
        waiting = submit(api, "m")
        sweeper: Sweeper = api.app.state.sweeper  # type: ignore[attr-defined]
        result = sweeper.sweep()
        assert result.failures == []
        assert _files(settings, ended) == {"input": True, "output": False, "log": True}
        assert _files(settings, waiting)["input"]
        assert _row(settings, ended).input_removed_at is None
        status = api.get(f"/api/tasks/{ended}/status").json()
        assert status["expires_at"] is not None  # a failed task's log expires too
        assert api.get(f"/api/tasks/{waiting}/status").json()["expires_at"] is None


def test_a_deleted_tasks_late_files_go_within_a_sweep(settings: Settings) -> None:
    settings = _retained(settings, input_retention_seconds=3600)
    with _app(settings) as api:
        add_model(api, "m")
        uid = submit(api, "m")
        assert api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "c1"}).status_code == 200
        assert api.delete(f"/api/tasks/{uid}").status_code == 200
        # What an upload that was under way when the task was deleted leaves behind.
        late = settings.data_dir / "outputs" / f"{uid}.zip"
        late.write_bytes(make_zip())
        (settings.data_dir / "logs" / f"{uid}.log").write_text("late\n")
        _wait_for(lambda: not any(_files(settings, uid).values()), timeout=INTERVAL * 20 + 5)


def test_a_staged_output_that_lost_goes_once_its_task_ended(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _retained(settings, input_retention_seconds=3600)
    settings = settings.model_copy(update={"retention_interval_seconds": 3600})
    with _app(settings) as api:
        add_model(api, "m")
        ended = _run(api, output=make_zip())
        running = submit(api, "m")
        assert api.post(f"/internal/tasks/{running}/claim", json={"consumer_id": "c1"}).status_code == 200
        holder = {"consumer_id": "c1", "attempt": 1}
        assert api.put(f"/internal/tasks/{running}/output", params=holder, content=make_zip()).status_code == 200
        # What the upload of a holder that lost the task leaves when it lands after the winner's finish.
        lost = settings.data_dir / "outputs" / f"{ended}.1-0123456789abcdef.staged"
        lost.write_bytes(make_zip())
        staged = list((settings.data_dir / "outputs").glob(f"{running}.*.staged"))
        assert len(staged) == 1
        sweeper: Sweeper = api.app.state.sweeper  # type: ignore[attr-defined]
        sweeper.sweep()
        assert lost.exists()  # its task ended only now: a finish may be landing it
        monkeypatch.setattr(retention, "STAGED_GRACE", timedelta(0))
        sweeper.sweep()
        assert not lost.exists() and staged[0].exists()  # the running task's holder keeps its upload
        assert _files(settings, ended)["output"]


def test_files_of_no_task_go_only_after_the_grace(settings: Settings) -> None:
    settings = _retained(settings)
    with _app(settings) as api:
        sweeper: Sweeper = api.app.state.sweeper  # type: ignore[attr-defined]
        old = settings.data_dir / "inputs" / "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6.zip"
        fresh = settings.data_dir / "inputs" / "Z1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6.zip"
        other = settings.data_dir / "inputs" / "not a task.txt"
        for path in (old, fresh, other):
            path.write_bytes(b"x")
        then = time.time() - ORPHAN_GRACE.total_seconds() - 60
        os.utime(old, (then, then))
        sweeper.sweep()
        assert not old.exists() and fresh.exists() and other.exists()


def test_two_instances_sweep_one_data_dir(settings: Settings) -> None:
    settings = _retained(settings, output_retention_seconds=0.3)
    with _app(settings) as first, _app(settings) as second:
        add_model(first, "m")
        uids = [_run(first, output=make_zip(), log="x\n") for _ in range(4)]
        time.sleep(0.4)
        sweepers: list[Sweeper] = [api.app.state.sweeper for api in (first, second)]  # type: ignore[attr-defined]
        results = []
        threads = [threading.Thread(target=lambda s=s: results.append(s.sweep())) for s in sweepers * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(result.failures == [] for result in results), [r.failures for r in results]
        for uid in uids:
            assert not any(_files(settings, uid).values())
            row = _row(settings, uid)
            assert row.input_removed_at is not None and row.output_expired_at is not None
            assert second.get(f"/api/tasks/{uid}").status_code == 553


def test_retention_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INTERNAL_TOKEN", "x" * 32)
    monkeypatch.setenv("INPUT_RETENTION_SECONDS", "60")
    monkeypatch.setenv("OUTPUT_RETENTION_SECONDS", "3600")
    monkeypatch.setenv("RETENTION_INTERVAL_SECONDS", "5")
    settings = Settings(data_dir=tmp_path)  # type: ignore[call-arg]
    assert (settings.input_retention_seconds, settings.output_retention_seconds) == (60, 3600)
    assert settings.retention_interval_seconds == 5
    for name in ("INPUT_RETENTION_SECONDS", "OUTPUT_RETENTION_SECONDS", "RETENTION_INTERVAL_SECONDS"):
        monkeypatch.delenv(name)
    defaults = Settings(data_dir=tmp_path)  # type: ignore[call-arg]
    assert defaults.input_retention_seconds == 0 and defaults.output_retention_seconds == 30 * 24 * 3600
    assert defaults.retention_interval_seconds == 30
