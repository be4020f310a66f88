"""Fair order across keys on one real consumer: RabbitMQ, the real private API (SQLite and PostgreSQL), docker."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.conftest import fresh_postgres_database
from tests.consumer.conftest import PrivateApi, RunningWorker, wait_until
from tests.consumer.helpers import zip_bytes

pytestmark = pytest.mark.docker

KEY_A, KEY_B = "k" + "a" * 16, "k" + "b" * 16


@pytest.fixture(params=["sqlite", "postgresql"])
def private_api_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The private API under test on either database."""
    if request.param == "sqlite":
        return {}
    return {"DATABASE_URL": fresh_postgres_database(request.getfixturevalue("postgres_url"))}


def _submit(api: PrivateApi, hid: str, owner: str) -> str:
    response = api.http.post(
        "/api/tasks/",
        params={"human_readable_id": hid},
        files={"zip_file": ("in.zip", zip_bytes({"x.txt": b"x"}), "application/zip")},
        headers={"X-Owner": owner},
    )
    assert response.status_code == 200, response.text
    return str(json.loads(response.content))


def test_one_consumer_interleaves_two_keys_tasks(
    private_api: PrivateApi, start_worker: Callable[..., RunningWorker], model_images: dict[str, str]
) -> None:
    """Three tasks of key A, then three of key B, all queued before the consumer starts: they start A B A B A B."""
    model = private_api.add_model(model_images["trivial"])
    a = [_submit(private_api, model["human_readable_id"], KEY_A) for _ in range(3)]
    b = [_submit(private_api, model["human_readable_id"], KEY_B) for _ in range(3)]
    start_worker()
    for uid in a + b:
        assert private_api.wait(uid, {"finished", "failed"}, timeout=120)["status"] == "finished"
    started = sorted(a + b, key=lambda uid: private_api.status(uid)["started_at"])
    owners = ["A" if uid in a else "B" for uid in started]
    assert owners == ["A", "B", "A", "B", "A", "B"], owners
    assert [uid for uid in started if uid in a] == a and [uid for uid in started if uid in b] == b  # FIFO per key
    # Every message was settled: the republished ones found their task done and were dropped.
    wait_until(lambda: private_api.http.get("/healthz").json().get("unpublished", 0) == 0, 15, "the outbox to drain")
