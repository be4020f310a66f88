"""Retention and the audit trail through the public API, in front of a real `python -m private_api` configured by its
environment with short retention times (INPUT_RETENTION_SECONDS, OUTPUT_RETENTION_SECONDS, RETENTION_INTERVAL_SECONDS).
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from public_api.config import Settings
from public_api.main import create_app

from .servers import ProcessServer, ThreadServer, free_port

TOKEN = "retention-private-token-0123456789"
OUTPUT_SECONDS = 3.0


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", "a")
    return buffer.getvalue()


def _wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[httpx.Client, httpx.Client, Path]]:
    """(public client, private client with the internal token, DATA_DIR)."""
    data = tmp_path / "data"
    env = {
        "INTERNAL_TOKEN": TOKEN,
        "DATA_DIR": str(data),
        "DATABASE_URL": "",
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",  # no broker: tasks stay in the outbox
        "LOG_LEVEL": "WARNING",
        "INPUT_RETENTION_SECONDS": "0",
        "OUTPUT_RETENTION_SECONDS": str(OUTPUT_SECONDS),
        "RETENTION_INTERVAL_SECONDS": "0.2",
    }
    private = ProcessServer("private_api", env, free_port()).wait_ready(timeout=60)
    settings = Settings.model_validate(
        {"internal_token": TOKEN, "private_api_url": private.url, "allow_public_post_model": "1"}
    )
    public = ThreadServer(create_app(settings)).start()
    with (
        httpx.Client(base_url=public.url, timeout=30) as client,
        httpx.Client(base_url=private.url, timeout=30, headers={"X-Internal-Token": TOKEN}) as internal,
    ):
        yield client, internal, data
    public.stop()
    private.stop()


def test_expiry_and_audit_through_the_public_api(stack: tuple[httpx.Client, httpx.Client, Path]) -> None:
    client, internal, data = stack
    assert client.post("/api/models/", params={"container_tag": "busybox", "human_readable_id": "m"}).status_code == 200
    res = client.post("/api/tasks/", params={"human_readable_id": "m"}, files={"zip_file": ("i.zip", _zip())})
    uid = json.loads(res.content)
    cancelled = json.loads(
        client.post("/api/tasks/", params={"human_readable_id": "m"}, files={"zip_file": ("i.zip", _zip())}).content
    )
    assert client.delete(f"/api/tasks/{cancelled}").status_code == 200

    # The consumer's side, on the private API: claim, upload the output, finish.
    holder: dict[str, str | int] = {"consumer_id": "c1", "attempt": 1}
    assert internal.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "c1"}).status_code == 200
    assert internal.put(f"/internal/tasks/{uid}/output", params=holder, content=_zip()).status_code == 200
    assert internal.post(f"/internal/tasks/{uid}/finish", json={**holder, "status": "finished"}).status_code == 200

    _wait_for(lambda: not (data / "inputs" / f"{uid}.zip").exists())
    status = client.get(f"/api/tasks/{uid}/status").json()
    expires = datetime.fromisoformat(status["expires_at"])
    assert expires == datetime.fromisoformat(status["finished_at"]) + timedelta(seconds=OUTPUT_SECONDS)
    assert client.get(f"/api/tasks/{uid}").status_code == 200

    _wait_for(lambda: client.get(f"/api/tasks/{uid}").status_code == 553)
    expired = client.get(f"/api/tasks/{uid}")
    assert "expired" in expired.json()["detail"] and expired.json()["expired_at"]
    _wait_for(lambda: not (data / "outputs" / f"{uid}.zip").exists())

    page = client.get("/api/audit/", params={"limit": 3}).json()
    assert page["total"] == 4
    assert [(row["action"], row["target"]) for row in page["items"]] == [
        ("task.cancel", cancelled),
        ("task.create", cancelled),
        ("task.create", uid),
    ]
    assert client.get("/api/audit", params={"action": "model.create"}).json()["items"][0]["target"] == "m"
    assert client.get("/api/audit/", params={"limit": 1000}).status_code == 422
