"""Fault: the task queues are purged (an operator's `rabbitmqctl purge_queue`, a policy, a mistake).

What a user must see: the waiting tasks are not lost. They stay pending, and once REPUBLISH_AFTER_SECONDS have
passed since their last publish the private API publishes them again from its database; consumers then run each
exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pika
import pytest
from fastapi.testclient import TestClient

from common.messages import CPU_QUEUE, GPU_QUEUE
from private_api.config import Settings
from private_api.main import create_app
from tests.private_api.conftest import AUTH
from tests.private_api.helpers import add_model, drain_queue, submit

REPUBLISH_AFTER = 3.0


def _wait_for(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def _depth(channel: pika.adapters.blocking_connection.BlockingChannel) -> int:
    return sum(channel.queue_declare(q, durable=True).method.message_count for q in (CPU_QUEUE, GPU_QUEUE))


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    quick = settings.model_copy(update={"republish_after_seconds": REPUBLISH_AFTER})
    with TestClient(create_app(quick), headers=AUTH) as client:
        yield client


def test_purged_queues_are_refilled_from_the_database(api: TestClient, rabbitmq_url: str) -> None:
    add_model(api, "m", use_gpu=False)
    add_model(api, "g", use_gpu=True)
    uids = [submit(api, "m"), submit(api, "g"), submit(api, "m"), submit(api, "g")]
    _wait_for(lambda: api.get("/healthz").json()["unpublished"] == 0)
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    assert _depth(channel) == 4
    purged_at = time.monotonic()
    for queue in (CPU_QUEUE, GPU_QUEUE):
        channel.queue_purge(queue)
    assert _depth(channel) == 0
    for uid in uids:
        assert api.get(f"/api/tasks/{uid}/status").json()["status"] == "pending"
    time.sleep(1.0)
    assert _depth(channel) == 0  # not before REPUBLISH_AFTER_SECONDS since the publish
    _wait_for(lambda: _depth(channel) == 4)
    assert time.monotonic() - purged_at >= REPUBLISH_AFTER - 1.0
    time.sleep(REPUBLISH_AFTER + 0.5)
    assert _depth(channel) == 4  # refilled once: the queue holds a message per task again, so no more copies
    connection.close()

    delivered = [uid for queue in (CPU_QUEUE, GPU_QUEUE) for uid, _ in drain_queue(rabbitmq_url, queue)]
    assert sorted(delivered) == sorted(uids)
    for uid in delivered:
        claimed = api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "cpu-1234"})
        assert claimed.status_code == 200 and claimed.json()["task"]["attempt"] == 1
        holder = {"consumer_id": "cpu-1234", "attempt": 1}
        assert api.post(f"/internal/tasks/{uid}/finish", json={**holder, "status": "finished"}).status_code == 200
    assert all(api.get(f"/api/tasks/{uid}/status").json()["status"] == "finished" for uid in uids)
