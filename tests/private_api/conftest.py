"""Fixtures for the private API tests: each test gets a fresh app on SQLite and on PostgreSQL, on the real broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient

from common.messages import CPU_QUEUE, GPU_QUEUE, declare_queues
from private_api.config import Settings
from private_api.main import create_app

TOKEN = "test-internal-token-0123456789"
AUTH = {"X-Internal-Token": TOKEN}


def _fresh_database(server_url: str) -> str:
    """A new empty PostgreSQL database on the server of server_url; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite3'}"
    return _fresh_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def purge_queues(rabbitmq_url: str) -> Iterator[None]:
    """Start and end with empty task queues."""

    def purge() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
        channel = connection.channel()
        declare_queues(channel)
        for queue in (GPU_QUEUE, CPU_QUEUE):
            channel.queue_purge(queue)
        connection.close()

    purge()
    yield
    purge()


@pytest.fixture
def settings(db_url: str, rabbitmq_url: str, tmp_path: Path, purge_queues: None) -> Settings:
    """Settings of a private API under test, with small limits so bad inputs are cheap to make."""
    return Settings(
        internal_token=TOKEN,
        data_dir=tmp_path / "data",
        database_url=db_url,
        rabbitmq_url=rabbitmq_url,
        outbox_interval_seconds=0.2,
        lease_seconds=2,
        max_attempts=2,
        max_upload_bytes=8 * 1024**2,
        max_zip_total_bytes=32 * 1024**2,
        max_zip_files=50,
        max_zip_ratio=100,
        max_log_bytes=1000,
    )


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """A started private API app, called in-process with the internal token."""
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


class LiveServer:
    """A private API served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the private API did not start")
            time.sleep(0.05)
        return self

    @property
    def port(self) -> int:
        sockets = self.server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    """A private API over real HTTP (for streaming and aborted uploads)."""
    with LiveServer(settings) as server:
        yield server
