"""Small helpers that make test data for the private API tests."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from typing import Any

import pika
from fastapi.testclient import TestClient

from common.messages import decode


def make_zip(files: dict[str, bytes | str] | None = None) -> bytes:
    """A zip holding files (name -> content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in (files or {"scan/ct.txt": "hello"}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


def symlink_zip() -> bytes:
    """A zip whose one entry is a symbolic link to /etc/passwd."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def add_model(api: TestClient, hid: str = "m", *, zip_bytes: bytes | None = None, **params: Any) -> dict[str, Any]:
    """Register a model and return its JSON."""
    query = {"container_tag": "busybox:stable", "human_readable_id": hid, "use_gpu": False, **params}
    files = {"zip_file": ("model.zip", zip_bytes)} if zip_bytes is not None else None
    response = api.post("/api/models/", params=query, files=files)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def submit(api: TestClient, hid: str = "m", data: bytes | None = None, param: str = "human_readable_id") -> str:
    """Submit a task and return its uid."""
    response = api.post("/api/tasks/", params={param: hid}, files={"zip_file": ("in.zip", data or make_zip())})
    assert response.status_code == 200, response.text
    uid = json.loads(response.content)
    assert isinstance(uid, str)
    return uid


def drain_queue(rabbitmq_url: str, queue: str) -> list[tuple[str, int | None]]:
    """Take every message off a queue: (uid, delivery mode) each."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    found = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        found.append((decode(body), properties.delivery_mode))
    connection.close()
    return found
