"""The relay in front of the real private API (`python -m private_api`, SQLite): the public calls end to end."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from public_api.config import Settings
from public_api.main import create_app

from .servers import ProcessServer, ThreadServer, free_port

TOKEN = "real-private-token-0123456789abcdef"


def _zip(files: dict[str, bytes]) -> bytes:
    """A zip holding these files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def private_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real private API on SQLite; its broker is absent, so tasks stay queued in its outbox."""
    data = tmp_path_factory.mktemp("private-data")
    env = {
        "INTERNAL_TOKEN": TOKEN,
        "DATA_DIR": str(data),
        "DATABASE_URL": "",
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        "LOG_LEVEL": "WARNING",
    }
    server = ProcessServer("private_api", env, free_port()).wait_ready(timeout=60)
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def relay(private_api: str) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Two public APIs in front of it, model posting on (keys: see test_keys.py, the private API checks them)."""
    common = {"internal_token": TOKEN, "private_api_url": private_api, "allow_public_post_model": "1"}
    open_settings = Settings.model_validate(common)
    keyed_settings = Settings.model_validate(common)
    servers = [ThreadServer(create_app(open_settings)).start(), ThreadServer(create_app(keyed_settings)).start()]
    clients = [httpx.Client(base_url=s.url, timeout=30, follow_redirects=False) for s in servers]
    yield clients[0], clients[1]
    for client, server in zip(clients, servers, strict=True):
        client.close()
        server.stop()


def test_public_calls_through_the_relay(relay: tuple[httpx.Client, httpx.Client], tmp_path: Path):
    client, _ = relay
    model = client.post(
        "/api/models",
        params={"container_tag": "busybox", "human_readable_id": "real-m1", "model_available": "true"},
        files={"zip_file": ("model.zip", _zip({"w.txt": b"w"}), "application/zip")},
    )
    assert model.status_code == 200, model.text
    assert model.json()["model_available"] is True
    taken = client.post("/api/models/", params={"container_tag": "busybox", "human_readable_id": "real-m1"})
    assert taken.status_code == 409
    assert isinstance(taken.json()["detail"], str)
    missing_zip = client.post(
        "/api/models/", params={"container_tag": "busybox", "human_readable_id": "real-m2", "model_available": "true"}
    )
    assert missing_zip.status_code == 422
    assert "real-m1" in [m["human_readable_id"] for m in client.get("/api/models").json()]

    uids = []
    for param in ("human_readable_id", "model_human_readable_id"):
        res = client.post("/api/tasks/", params={param: "real-m1"}, files={"zip_file": ("i.zip", _zip({"a": b"1"}))})
        assert res.status_code == 200, res.text
        uids.append(json.loads(res.content))
    for uid in uids:
        assert client.get(f"/api/tasks/{uid}").status_code == 551
        assert client.get(f"/api/tasks/{uid}/status/").json()["status"] == "pending"
        assert client.get(f"/api/tasks/{uid}/logs").status_code == 200
    unknown = client.post("/api/tasks", params={"human_readable_id": "nope"}, files={"zip_file": ("i.zip", _zip({}))})
    assert unknown.status_code == 550
    not_zip = client.post("/api/tasks", params={"human_readable_id": "real-m1"}, files={"zip_file": ("i.zip", b"x")})
    assert 400 <= not_zip.status_code < 500
    assert isinstance(not_zip.json()["detail"], str)
    assert client.delete(f"/api/tasks/{uids[0]}/").status_code == 200
    assert client.get(f"/api/tasks/{uids[0]}").status_code == 554
    assert client.get(f"/api/tasks/{'Z' * 22}/status").status_code == 554
