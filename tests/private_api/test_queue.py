"""Publishing: durable queues, persistent messages, the right resource class, and no task lost in a broker outage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from common.messages import CPU_QUEUE, GPU_QUEUE
from private_api.config import Settings
from private_api.main import create_app
from tests.private_api.conftest import AUTH
from tests.private_api.helpers import add_model, drain_queue, submit
from tests.private_api.tcp_proxy import CuttableProxy


def _wait_for(predicate: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_tasks_go_to_their_resource_class_queue_as_persistent_messages(api: TestClient, rabbitmq_url: str) -> None:
    add_model(api, "cpu-model", use_gpu=False)
    add_model(api, "gpu-model", use_gpu=True)
    cpu_uid = submit(api, "cpu-model")
    gpu_uid = submit(api, "gpu-model")
    _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)
    assert drain_queue(rabbitmq_url, CPU_QUEUE) == [(cpu_uid, 2)]
    assert drain_queue(rabbitmq_url, GPU_QUEUE) == [(gpu_uid, 2)]


@pytest.fixture
def proxy(rabbitmq_url: str) -> Iterator[CuttableProxy]:
    url = make_url(rabbitmq_url.replace("amqp://", "postgresql://", 1))  # borrow SQLAlchemy's URL parser
    cut = CuttableProxy(url.host or "127.0.0.1", url.port or 5672)
    yield cut
    cut.close()


def test_broker_outage_during_submission_loses_nothing(
    settings: Settings, rabbitmq_url: str, proxy: CuttableProxy, tmp_path: Path
) -> None:
    through_proxy = rabbitmq_url.replace(rabbitmq_url.split("@", 1)[1].split("/", 1)[0], f"127.0.0.1:{proxy.port}")
    settings = settings.model_copy(update={"rabbitmq_url": through_proxy})
    with TestClient(create_app(settings), headers=AUTH) as api:
        add_model(api, "m", use_gpu=False)
        _wait_for(lambda: api.get("/healthz").json()["broker"] == "connected")
        before = submit(api, "m")
        _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)

        proxy.cut()
        during = [submit(api, "m") for _ in range(5)]
        for uid in during:
            assert api.get(f"/api/tasks/{uid}").status_code == 551
        _wait_for(lambda: api.get("/healthz").json()["status"] == "degraded")
        assert api.get("/healthz").json()["unpublished"] == 5
        time.sleep(1)
        assert drain_queue(rabbitmq_url, CPU_QUEUE) == [(before, 2)]

        proxy.restore()
        _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0, seconds=30)
        time.sleep(1)
        assert [uid for uid, _ in drain_queue(rabbitmq_url, CPU_QUEUE)] == during
        assert api.get("/healthz").json()["broker"] == "connected"


def test_tasks_accepted_while_broker_never_reachable_are_published_at_next_start(
    settings: Settings, rabbitmq_url: str
) -> None:
    down = settings.model_copy(update={"rabbitmq_url": "amqp://guest:guest@127.0.0.1:1/%2F"})
    with TestClient(create_app(down), headers=AUTH) as api:
        add_model(api, "m", use_gpu=False)
        uids = [submit(api, "m") for _ in range(3)]
        assert api.get("/healthz").json()["unpublished"] == 3
    with TestClient(create_app(settings), headers=AUTH) as api:
        _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)
    assert [uid for uid, _ in drain_queue(rabbitmq_url, CPU_QUEUE)] == uids


def _claim(api: TestClient, uid: str, consumer: str) -> dict[str, Any]:
    response = api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": consumer})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_reaper_returns_a_lost_consumers_task_to_the_queue_then_fails_it(
    api: TestClient, settings: Settings, rabbitmq_url: str
) -> None:
    add_model(api, "m", use_gpu=False)
    uid = submit(api, "m")
    _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)
    assert drain_queue(rabbitmq_url, CPU_QUEUE) == [(uid, 2)]
    _claim(api, uid, "lost-1")
    time.sleep(settings.lease_seconds / 2)
    assert api.get(f"/api/tasks/{uid}/status").json()["status"] == "running"  # not reaped within its lease
    _wait_for(lambda: api.get(f"/api/tasks/{uid}/status").json()["status"] == "pending")
    status = api.get(f"/api/tasks/{uid}/status").json()
    assert status["attempt"] == 1 and status["consumer_id"] is None
    assert [(e["consumer"], e["status"]) for e in status["history"]] == [("lost-1", "lost")]
    _wait_for(lambda: drain_queue(rabbitmq_url, CPU_QUEUE) == [(uid, 2)])  # published again
    assert _claim(api, uid, "lost-2")["task"]["attempt"] == 2
    _wait_for(lambda: api.get(f"/api/tasks/{uid}/status").json()["status"] == "failed")
    reason = api.get(f"/api/tasks/{uid}").json()["reason"]
    assert reason.startswith("consumer lost 2 times") and "gave up after 2 attempts" in reason


def test_a_database_outage_gives_every_holder_a_full_lease_afterwards(api: TestClient, settings: Settings) -> None:
    """While the database is away nobody can renew a lease: when it is back, holders get a full lease to check in."""
    add_model(api, "m", use_gpu=False)
    uid = submit(api, "m")
    _claim(api, uid, "holder-1")
    publisher = api.app.state.publisher  # type: ignore[attr-defined]
    working = publisher.sessions

    def database_away() -> Any:
        raise ConnectionError("the database is restarting")

    publisher.sessions = database_away
    time.sleep(settings.lease_seconds * 2)  # longer than a lease, with the reaper failing every round
    publisher.sessions = working
    time.sleep(settings.lease_seconds / 2)
    assert api.get(f"/api/tasks/{uid}/status").json()["status"] == "running", "reaped right after the outage"
    beat = api.post(f"/internal/tasks/{uid}/heartbeat", json={"consumer_id": "holder-1", "attempt": 1})
    assert beat.status_code == 200 and beat.json()["status"] == "running", beat.text
    _wait_for(lambda: api.get(f"/api/tasks/{uid}/status").json()["status"] == "pending")  # silence: reaped


@pytest.fixture
def quick_republish(settings: Settings) -> Iterator[TestClient]:
    """A private API that publishes unclaimed tasks again after one second."""
    with TestClient(create_app(settings.model_copy(update={"republish_after_seconds": 1.0})), headers=AUTH) as api:
        yield api


def _queue_depth(rabbitmq_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        return int(connection.channel().queue_declare(queue=queue, durable=True).method.message_count)
    finally:
        connection.close()


def test_unclaimed_tasks_are_published_again_only_when_their_messages_are_gone(
    quick_republish: TestClient, rabbitmq_url: str
) -> None:
    api = quick_republish
    add_model(api, "m", use_gpu=False)
    uids = [submit(api, "m") for _ in range(3)]
    _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)
    time.sleep(2.5)  # past REPUBLISH_AFTER_SECONDS: the queue still holds one message per task, so no duplicates
    assert _queue_depth(rabbitmq_url, CPU_QUEUE) == 3
    assert sorted(uid for uid, _ in drain_queue(rabbitmq_url, CPU_QUEUE)) == sorted(uids)  # the messages are lost
    _wait_for(lambda: _queue_depth(rabbitmq_url, CPU_QUEUE) == 3)
    assert sorted(uid for uid, _ in drain_queue(rabbitmq_url, CPU_QUEUE)) == sorted(uids)
    _claim(api, uids[0], "c1")  # a running task needs no message
    _wait_for(lambda: _queue_depth(rabbitmq_url, CPU_QUEUE) == 2)
    assert sorted(uid for uid, _ in drain_queue(rabbitmq_url, CPU_QUEUE)) == sorted(uids[1:])


def test_a_deleted_queue_is_declared_again_and_refilled(quick_republish: TestClient, rabbitmq_url: str) -> None:
    api = quick_republish
    add_model(api, "g", use_gpu=True)
    uid = submit(api, "g")
    _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    connection.channel().queue_delete(GPU_QUEUE)
    connection.close()
    _wait_for(lambda: _queue_depth(rabbitmq_url, GPU_QUEUE) == 1)
    assert drain_queue(rabbitmq_url, GPU_QUEUE) == [(uid, 2)]


def test_two_private_api_instances_on_postgresql_publish_each_task_once(
    settings: Settings, db_url: str, rabbitmq_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("two private API instances share a database only on PostgreSQL")
    with (
        TestClient(create_app(settings), headers=AUTH) as first,
        TestClient(create_app(settings), headers=AUTH) as second,
    ):
        add_model(first, "m", use_gpu=False)
        uids = [submit(first if n % 2 else second, "m") for n in range(40)]
        _wait_for(lambda: first.get("/healthz").json()["unpublished"] == 0)
        time.sleep(1)
        assert sorted(uid for uid, _ in drain_queue(rabbitmq_url, CPU_QUEUE)) == sorted(uids)
