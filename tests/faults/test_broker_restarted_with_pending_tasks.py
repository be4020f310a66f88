"""Fault: RabbitMQ restarts, or comes back with its data lost, while tasks wait in its queue.

The broker here is a container of its own (RABBITMQ_IMAGE) on a fixed port, so it can be restarted and replaced for
real without disturbing the session's shared broker. What a user must see: every accepted task, including those
accepted while the broker was away, is queued again and runs exactly once (one successful claim per task).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pika
import pytest
from docker.models.containers import Container
from fastapi.testclient import TestClient

from common.messages import CPU_QUEUE, GPU_QUEUE, decode
from private_api.config import Settings
from private_api.main import create_app
from tests.conftest import DEFAULT_RABBITMQ_IMAGE, TEST_LABEL, _amqp_problem, _ensure_image, _wait_until
from tests.faults.private_api_process import free_port
from tests.private_api.conftest import AUTH
from tests.private_api.helpers import add_model, submit


class OwnBroker:
    """A RabbitMQ container on a fixed port of 127.0.0.1 that a test can restart or replace with an empty one."""

    def __init__(self, client: docker.DockerClient, image: str) -> None:
        self.client = client
        self.image = image
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.url = f"amqp://inference:{self.password}@127.0.0.1:{self.port}/%2F"
        self.container: Container | None = None

    def start(self) -> None:
        """Start a fresh broker (empty data) and wait until it accepts a login."""
        self.container = self.client.containers.run(
            self.image,
            detach=True,
            name=f"state-fault-rabbitmq-{uuid.uuid4().hex[:10]}",
            environment={"RABBITMQ_DEFAULT_USER": "inference", "RABBITMQ_DEFAULT_PASS": self.password},
            ports={"5672/tcp": ("127.0.0.1", self.port)},
            labels={TEST_LABEL: "1"},
        )
        self.wait()

    def wait(self) -> None:
        _wait_until(lambda: _amqp_problem(self.url), what="the test's own RabbitMQ", timeout=180, container=None)

    def purge(self) -> None:
        """Empty the task queues (what an earlier test left)."""
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = connection.channel()
        for queue in (CPU_QUEUE, GPU_QUEUE):
            channel.queue_declare(queue=queue, durable=True)
            channel.queue_purge(queue)
        connection.close()

    def remove(self) -> None:
        """Remove the container and its data."""
        if self.container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self.container.remove(force=True, v=True)
            self.container = None


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the fault is the broker's, and each broker start costs seconds (both databases' outboxes are
    tested against the broker in tests/private_api/test_queue.py)."""
    return f"sqlite:///{tmp_path / 'db.sqlite3'}"


@pytest.fixture(scope="module")
def broker(docker_client: docker.DockerClient) -> Iterator[OwnBroker]:
    image = os.environ.get("RABBITMQ_IMAGE") or DEFAULT_RABBITMQ_IMAGE
    _ensure_image(docker_client, image, "RABBITMQ_IMAGE")
    own = OwnBroker(docker_client, image)
    own.start()
    try:
        yield own
    finally:
        own.remove()


def _wait_for(predicate: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def _take_all(url: str, queue: str) -> list[str]:
    """Every message's uid from a queue (acknowledged), as a consumer would receive them."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=True)
        uids: list[str] = []
        while True:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return uids
            uids.append(decode(body))
    finally:
        connection.close()


def _run_each_once(api: TestClient, uids: list[str], delivered: list[str]) -> None:
    """Act as consumers for every delivery: exactly one claim per task succeeds, duplicates are refused."""
    assert set(delivered) == set(uids)
    claimed = [m for m in delivered if api.post(f"/internal/tasks/{m}/claim", json={"consumer_id": "c"}).is_success]
    assert sorted(claimed) == sorted(uids)


@pytest.fixture
def app_settings(settings: Settings, broker: OwnBroker) -> Settings:
    broker.purge()
    return settings.model_copy(update={"rabbitmq_url": broker.url, "republish_after_seconds": 2.0})


def test_tasks_survive_a_broker_restart_and_run_once(app_settings: Settings, broker: OwnBroker) -> None:
    with TestClient(create_app(app_settings), headers=AUTH) as api:
        add_model(api, "m", use_gpu=False)
        add_model(api, "g", use_gpu=True)
        _wait_for(lambda: api.get("/healthz").json()["broker"] == "connected")
        before = [submit(api, "m"), submit(api, "g"), submit(api, "m")]
        _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)

        assert broker.container is not None
        broker.container.stop(timeout=30)  # a clean shutdown: durable queues stay on its volume
        during = [submit(api, "m"), submit(api, "g")]  # accepted while the broker is away
        for uid in before + during:
            assert api.get(f"/api/tasks/{uid}").status_code == 551
        broker.container.start()
        broker.wait()

        _wait_for(lambda: api.get("/healthz").json()["broker"] == "connected")
        _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)
        time.sleep(3)  # past REPUBLISH_AFTER_SECONDS: lost messages (if any) are published again
        delivered = _take_all(broker.url, CPU_QUEUE) + _take_all(broker.url, GPU_QUEUE)
        _run_each_once(api, before + during, delivered)


def test_a_broker_that_lost_its_data_gets_the_queue_rebuilt(app_settings: Settings, broker: OwnBroker) -> None:
    with TestClient(create_app(app_settings), headers=AUTH) as api:
        add_model(api, "m", use_gpu=False)
        add_model(api, "g", use_gpu=True)
        uids = [submit(api, "m"), submit(api, "g"), submit(api, "m")]
        _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)

        broker.remove()  # the RabbitMQ data volume is gone
        broker.start()  # the same address, an empty broker
        _wait_for(lambda: api.get("/healthz").json()["broker"] == "connected")
        assert api.get("/healthz").json()["unpublished"] == 0  # the database still says "published"...

        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()

        def queued() -> int:
            depths = [channel.queue_declare(q, durable=True).method.message_count for q in (CPU_QUEUE, GPU_QUEUE)]
            return sum(depths)

        _wait_for(lambda: queued() == 3)  # ...and the outbox rebuilds the queues from it
        connection.close()
        _run_each_once(api, uids, _take_all(broker.url, CPU_QUEUE) + _take_all(broker.url, GPU_QUEUE))
