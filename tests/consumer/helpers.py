"""Small helpers for the consumer tests: model JSON and zip files."""

from __future__ import annotations

import io
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from job_consumer.private_api import PrivateApiClient
from job_consumer.schemas import ModelInfo


def make_model(tag: str, **overrides: Any) -> ModelInfo:
    """A CPU model JSON for tag with small limits (overridable)."""
    data: dict[str, Any] = {
        "id": 1,
        "human_readable_id": f"m-{secrets.token_hex(4)}",
        "container_tag": tag,
        "use_gpu": False,
        "timeout": 60,
        "mem_limit": "128m",
        "shm_size": "64m",
        "cpus": 1,
        "network": False,
    }
    data.update(overrides)
    return ModelInfo.model_validate(data)


def make_zip(path: Path, files: dict[str, bytes | None], modes: dict[str, int] | None = None) -> Path:
    """Write a zip at path; a None value makes a folder entry."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            if data is None:
                archive.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
                continue
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100000 | (modes or {}).get(name, 0o644)) << 16
            archive.writestr(info, data)
    return path


def zip_entries(path: Path) -> dict[str, zipfile.ZipInfo]:
    """The entries of a zip by name."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: info for info in archive.infolist()}


def read_member(path: Path, name: str) -> bytes:
    """One member's bytes."""
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A small zip in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def mock_api(handler: Callable[[httpx.Request], httpx.Response], instance_id: str, **options: Any) -> PrivateApiClient:
    """A private API client for instance_id (name: the id without its suffix) whose HTTP goes to handler."""
    return PrivateApiClient(
        "http://api",
        token="mock-token-0123456789abcdef",
        instance_id=instance_id,
        consumer_name=instance_id.rsplit("-", 1)[0],
        transport=httpx.MockTransport(handler),
        **options,
    )
