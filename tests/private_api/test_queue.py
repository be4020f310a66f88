"""Publishing: durable queues, persistent messages, the right resource class, and no task lost in a broker outage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

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
