"""The SDK's list_audit and `inference-server audit list` against a real private API (its internal token: the
operator's way in; through the public API an admin key makes the same call)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference_client import AuditPage, ForbiddenError, InferenceClient
from inference_client.cli import main
from private_api.auth import Caller, current_caller
from tests.private_api.conftest import TOKEN, LiveServer, live, purge_queues, settings
from tests.private_api.helpers import make_zip

__all__ = ["live", "purge_queues", "settings"]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the route's own tests run on both databases."""
    return f"sqlite:///{tmp_path / 'db.sqlite3'}"


@pytest.fixture
def client(live: LiveServer) -> Iterator[InferenceClient]:
    with InferenceClient(live.url, internal_token=TOKEN) as sdk:
        yield sdk


def test_sdk_and_cli_list_the_audit_trail(
    client: InferenceClient, live: LiveServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    client.add_model(container_tag="busybox:stable", human_readable_id="m", use_gpu=False)
    (tmp_path / "in.zip").write_bytes(make_zip())
    uid = client.submit("m", tmp_path / "in.zip")
    client.cancel(uid)

    page = client.list_audit()
    assert isinstance(page, AuditPage) and page.total == 3
    assert [(row.action, row.target) for row in page.items] == [
        ("task.cancel", uid),
        ("task.create", uid),
        ("model.create", "m"),
    ]
    assert client.list_audit(action="model.create").items[0].target == "m"
    assert client.list_audit(target=uid, limit=1, offset=1).items[0].action == "task.create"

    base = ["--url", live.url, "--internal-token", TOKEN]
    assert main([*base, "audit", "list", "--json", "--action", "task.cancel"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"] == 1 and data["items"][0]["target"] == uid
    assert main([*base, "audit", "list", "--limit", "2"]) == 0
    text = capsys.readouterr().out
    assert "task.cancel" in text and "model.create" not in text and "2 of 3 rows" in text


def test_a_user_key_gets_forbidden(client: InferenceClient, live: LiveServer) -> None:
    app: Any = live.server.config.app
    app.dependency_overrides[current_caller] = lambda: Caller(owner="kuser", admin=False, public=True)
    try:
        with pytest.raises(ForbiddenError):
            client.list_audit()
        assert main(["--url", live.url, "--internal-token", TOKEN, "audit", "list"]) == 4
    finally:
        app.dependency_overrides.clear()
