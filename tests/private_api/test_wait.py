"""Waiting without polling: `status?wait=S` answers when the task changes, and waiting costs no connection."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from private_api.config import Settings
from private_api.orm import Task
from tests.private_api.conftest import AUTH, LiveServer
from tests.private_api.helpers import make_zip


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with a lease that outlasts a test (an expired lease would change the task)."""
    return settings.model_copy(update={"lease_seconds": 120.0, "wait_interval_seconds": 0.5})


def _client(live: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers=AUTH, timeout=90)


def _running_task(http: httpx.Client) -> str:
    """A task claimed by consumer c1 (attempt 1)."""
    query = {"container_tag": "busybox:stable", "human_readable_id": "m", "use_gpu": "false"}
    assert http.post("/api/models/", params=query).status_code in (200, 409)
    uid = http.post("/api/tasks/", params={"human_readable_id": "m"}, files={"zip_file": ("in.zip", make_zip())}).json()
    assert http.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "c1"}).status_code == 200
    return str(uid)


def _finish(http: httpx.Client, uid: str) -> None:
    body = {"consumer_id": "c1", "attempt": 1, "status": "finished"}
    assert http.post(f"/internal/tasks/{uid}/finish", json=body).status_code == 200


class Waiting:
    """A `status?wait=S` request in a thread: its answer and when it came."""

    def __init__(self, url: str, uid: str, seconds: float) -> None:
        self.answer: httpx.Response | None = None
        self.at = 0.0
        self.thread = threading.Thread(target=self._run, args=(url, uid, seconds), daemon=True)
        self.thread.start()

    def _run(self, url: str, uid: str, seconds: float) -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=90) as http:
            self.answer = http.get(f"/api/tasks/{uid}/status", params={"wait": seconds})
        self.at = time.monotonic()

    def result(self, timeout: float = 10) -> dict[str, Any]:
        self.thread.join(timeout)
        assert self.answer is not None, "no answer"
        assert self.answer.status_code == 200, self.answer.text
        body: dict[str, Any] = self.answer.json()
        return body


def test_wait_answers_when_the_task_ends_not_before(live: LiveServer) -> None:
    with _client(live) as http:
        uid = _running_task(http)
        waiting = Waiting(live.url, uid, 30)
        time.sleep(1.0)
        # A heartbeat changes nothing a waiter looks at: it keeps waiting.
        assert http.post(f"/internal/tasks/{uid}/heartbeat", json={"consumer_id": "c1", "attempt": 1}).is_success
        time.sleep(0.7)
        assert waiting.answer is None, "answered before the task changed"
        _finish(http, uid)
        ended = time.monotonic()
        body = waiting.result()
        assert body["status"] == "finished" and body["uid"] == uid
        assert waiting.at - ended < 1.0
        # An ended task answers at once.
        started = time.monotonic()
        assert http.get(f"/api/tasks/{uid}/status", params={"wait": 30}).json()["status"] == "finished"
        assert time.monotonic() - started < 1.0


def test_progress_written_elsewhere_is_seen_on_the_next_read(live: LiveServer) -> None:
    app = app_of(live)
    with _client(live) as http:
        uid = _running_task(http)
        waiting = Waiting(live.url, uid, 30)
        time.sleep(0.8)
        assert waiting.answer is None
        # As another process of the private API would: a commit this process's sessions never saw.
        with app.state.engine.begin() as connection:
            connection.execute(update(Task).where(Task.uid == uid).values(progress=0.42, progress_message="fold 2"))
        changed = time.monotonic()
        body = waiting.result()
        assert body["progress"] == 0.42 and body["progress_message"] == "fold 2" and body["status"] == "running"
        assert waiting.at - changed < 1.5


def test_wait_bounds_and_timeout(live: LiveServer) -> None:
    with _client(live) as http:
        uid = _running_task(http)
        for bad in ("0", "-1", "60.5", "abc"):
            assert http.get(f"/api/tasks/{uid}/status", params={"wait": bad}).status_code == 422
        started = time.monotonic()
        body = http.get(f"/api/tasks/{uid}/status", params={"wait": 0.6}).json()
        assert body["status"] == "running" and 0.55 <= time.monotonic() - started < 3
        waiting = Waiting(live.url, uid, 30)
        time.sleep(0.5)
        assert http.delete(f"/api/tasks/{uid}").status_code == 200
        waiting.thread.join(5)
        assert waiting.answer is not None and waiting.answer.status_code == 554


async def _wait_many(url: str, uid: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=90, limits=limits) as http:
        calls = [http.get(f"/api/tasks/{uid}/status", params={"wait": 60}) for _ in range(count)]
        return await asyncio.gather(*calls)


def test_200_waiting_clients_hold_no_database_connection(live: LiveServer, db_url: str) -> None:
    app = app_of(live)
    watcher, pool = app.state.watcher, app.state.engine.pool
    with _client(live) as http:
        uid = _running_task(http)
        threads_before = threading.active_count()
        answers: list[httpx.Response] = []
        runner = threading.Thread(target=lambda: answers.extend(asyncio.run(_wait_many(live.url, uid, 200))))
        runner.start()
        deadline = time.monotonic() + 60
        while watcher.waiting < 200:
            assert time.monotonic() < deadline, f"only {watcher.waiting} waiting"
            time.sleep(0.1)
        samples = []
        for _ in range(10):
            samples.append(pool.checkedout())
            time.sleep(0.1)
        # The watcher's one read may be under way at a sample; no waiter holds a connection.
        assert max(samples) <= 1 and min(samples) == 0, samples
        if db_url.startswith("postgresql"):
            with app.state.engine.connect() as connection:
                busy = connection.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state <> 'idle' AND pid <> pg_backend_pid()"
                ).scalar()
            assert busy is not None and busy <= 1
        # No thread per waiter either (the worker pool and the client's loop add a few).
        assert threading.active_count() - threads_before < 50
        _finish(http, uid)
        runner.join(30)
        assert len(answers) == 200
        assert all(a.status_code == 200 and a.json()["status"] == "finished" for a in answers)


@pytest.mark.usefixtures("purge_queues")
def test_wait_through_the_public_relay(live: LiveServer) -> None:
    from public_api.config import Settings as PublicSettings
    from public_api.main import create_app as create_public_app
    from tests.public_relay.servers import ThreadServer

    public = ThreadServer(
        create_public_app(
            PublicSettings.model_validate({"internal_token": AUTH["X-Internal-Token"], "private_api_url": live.url})
        )
    ).start()
    try:
        with _client(live) as http:
            uid = _running_task(http)
            waiting = Waiting(public.url, uid, 30)
            time.sleep(1.0)
            assert waiting.answer is None
            _finish(http, uid)
            ended = time.monotonic()
            assert waiting.result()["status"] == "finished"
            assert waiting.at - ended < 1.0
            with httpx.Client(base_url=public.url) as outside:
                assert outside.get(f"/api/tasks/{uid}/status", params={"wait": 61}).status_code == 422
    finally:
        public.stop()


def app_of(live: LiveServer) -> FastAPI:
    """The private API app a live server serves."""
    app = live.server.config.app
    assert isinstance(app, FastAPI)
    return app
