"""API keys in the database, through the public API in front of the real private API, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from inference_client import AuthError, ForbiddenError, InferenceClient
from inference_client.cli import main as cli_main
from private_api import crud_keys
from private_api.config import Settings as PrivateSettings
from private_api.db import make_engine, make_sessionmaker
from private_api.main import create_app as create_private
from private_api.orm import AuditEntry, utcnow
from public_api.config import Settings as PublicSettings
from public_api.main import create_app as create_public
from tests.conftest import fresh_postgres_database

from .servers import ROOT, ThreadServer, free_port

TOKEN = "keys-private-token-0123456789abcdef"
BOOT_USER = "boot-user-key-" + "u" * 20
BOOT_ADMIN = "boot-admin-key-" + "a" * 20


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", b"1")
    return buffer.getvalue()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Stack:
    """A private API (broker absent: tasks stay queued) and a public API in front of it."""

    public: httpx.Client
    url: str
    db_url: str
    env: dict[str, str]

    def submit(self, secret: str | None, model: str = "keys-m") -> str:
        headers = _bearer(secret) if secret else {}
        res = self.public.post(
            "/api/tasks/", params={"human_readable_id": model}, files={"zip_file": ("i.zip", _zip())}, headers=headers
        )
        assert res.status_code == 200, res.text
        return str(json.loads(res.content))


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """A factory of stacks: `make(db_url, **private_settings)`."""
    started: list[tuple[ThreadServer, ThreadServer, httpx.Client]] = []

    def make(db_url: str, **private: object) -> Stack:
        data = tmp_path / f"data{len(started)}"
        env = {"INTERNAL_TOKEN": TOKEN, "DATA_DIR": str(data), "DATABASE_URL": db_url}
        broker = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
        settings = PrivateSettings.model_validate(
            {"internal_token": TOKEN, "data_dir": data, "database_url": db_url, "rabbitmq_url": broker, **private}
        )
        private_server = ThreadServer(create_private(settings)).start()
        public_settings = PublicSettings.model_validate(
            {"internal_token": TOKEN, "private_api_url": private_server.url, "allow_public_post_model": "1"}
        )
        public_server = ThreadServer(create_public(public_settings)).start()
        client = httpx.Client(base_url=public_server.url, timeout=30)
        started.append((private_server, public_server, client))
        return Stack(client, public_server.url, settings.db_url, env)

    yield make
    for private_server, public_server, client in started:
        client.close()
        public_server.stop()
        private_server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    return fresh_postgres_database(request.getfixturevalue("postgres_url"))


def _add_model(stack: Stack, secret: str, hid: str = "keys-m") -> httpx.Response:
    params = {"container_tag": "busybox", "human_readable_id": hid}
    return stack.public.post("/api/models/", params=params, headers=_bearer(secret))


def test_keys_created_used_rotated_revoked_expired(make_stack: Callable[..., Stack], db_url: str) -> None:
    stack = make_stack(db_url, api_keys=BOOT_USER, admin_api_keys=BOOT_ADMIN)
    public = stack.public
    assert _add_model(stack, BOOT_USER).status_code == 403  # the private API decides who is an admin
    assert _add_model(stack, BOOT_ADMIN).status_code == 200
    old_task = stack.submit(BOOT_USER)

    admin = InferenceClient(stack.url, api_key=BOOT_ADMIN)
    alice = admin.create_key("alice", expires_in_days=30, max_queued_tasks=5)
    assert alice.secret and alice.id.startswith("k") and alice.state == "active" and alice.max_queued_tasks == 5
    bob = json.loads(public.post("/api/keys/", json={"name": "bob"}, headers=_bearer(BOOT_ADMIN)).content)
    listed = {k.id: k for k in admin.list_keys()}
    assert set(listed) == {alice.id, bob["id"]} and all(k.secret is None for k in listed.values())
    assert "secret" not in public.get("/api/keys", headers=_bearer(BOOT_ADMIN)).text
    with InferenceClient(stack.url, api_key=alice.secret) as as_alice, pytest.raises(ForbiddenError):
        as_alice.create_key("mallory", admin=True)
    assert public.get("/api/keys/", headers=_bearer(bob["secret"])).status_code == 403

    # Isolation: every task call of one key on the other's task is 554; the list holds only one's own.
    a_task, b_task = stack.submit(alice.secret), stack.submit(bob["secret"])
    a, b = _bearer(alice.secret), _bearer(bob["secret"])
    for path in (f"/api/tasks/{a_task}", f"/api/tasks/{a_task}/status", f"/api/tasks/{a_task}/logs"):
        assert public.get(path, headers=b).status_code == 554
        assert public.get(path, headers=a).status_code in (200, 551)
    assert public.delete(f"/api/tasks/{a_task}", headers=b).status_code == 554
    assert [t["uid"] for t in public.get("/api/tasks/", headers=a).json()["items"]] == [a_task]
    assert public.get(f"/api/tasks/{a_task}/status", headers=a).json()["owner"] == alice.id
    assert {k.id: k for k in admin.list_keys()}[alice.id].last_used_at is not None

    rotated = admin.rotate_key(alice.id)
    assert rotated.id == alice.id and rotated.secret != alice.secret
    stale = public.get(f"/api/tasks/{a_task}/status", headers=a)
    assert (stale.status_code, stale.headers["www-authenticate"]) == (401, "Bearer")
    assert public.get(f"/api/tasks/{a_task}/status", headers=_bearer(rotated.secret or "")).status_code == 200

    assert public.delete(f"/api/keys/{bob['id']}", headers=_bearer(BOOT_ADMIN)).json()["state"] == "revoked"
    revoked = public.get(f"/api/tasks/{b_task}/status", headers=b)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]

    engine = make_engine(stack.db_url)
    with make_sessionmaker(engine)() as session:
        old = crud_keys.create_key(session, name="old", expires_at=utcnow() - timedelta(days=1))
        session.commit()
        actions = sorted(session.scalars(sa.select(AuditEntry.action).where(AuditEntry.action.like("key.%"))))
    engine.dispose()
    expired = public.get("/api/models/", headers=_bearer(old.secret))
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    assert actions == ["key.create", "key.create", "key.revoke", "key.rotate"]

    # Bootstrap keys keep working, and their older tasks stay theirs.
    user = _bearer(BOOT_USER)
    status = public.get(f"/api/tasks/{old_task}/status", headers=user).json()
    assert status["owner"] == hashlib.sha256(BOOT_USER.encode()).hexdigest()
    assert public.get(f"/api/tasks/{old_task}/status", headers=_bearer(rotated.secret or "")).status_code == 554
    missing = public.get("/api/models/")
    assert missing.status_code == 401 and "required" in missing.json()["detail"]
    assert public.get("/api/models/", headers=_bearer("not-a-key-" + "x" * 20)).status_code == 401
    admin.close()


def _host_keys(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m private_api keys ...` on the stack's database, as an operator runs it on the host."""
    env = {**os.environ, **stack.env}
    command = [sys.executable, "-m", "private_api", "keys", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_open_service_until_the_first_key_from_the_host(
    make_stack: Callable[..., Stack], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = make_stack(f"sqlite:///{tmp_path / 'open.sqlite3'}")
    public = stack.public
    assert public.get("/api/models/").status_code == 200
    assert public.post("/api/models/", params={"container_tag": "busybox", "human_readable_id": "keys-m"}).is_success
    open_task = stack.submit(None)
    refused = public.post("/api/keys/", json={"name": "first", "admin": True})
    assert refused.status_code == 403
    assert "docker compose exec private-api python -m private_api keys create --admin NAME" in refused.json()["detail"]

    made = _host_keys(stack, "--json", "create", "--admin", "first")
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)
    assert public.get("/api/models/").status_code == 401
    with InferenceClient(stack.url) as anonymous, pytest.raises(AuthError):
        anonymous.list_models()
    # A task made while the service was open stays reachable by its uid.
    assert public.get(f"/api/tasks/{open_task}/status", headers=_bearer(first["secret"])).status_code == 200

    cli = ["--url", stack.url, "--api-key", first["secret"], "--json"]
    assert cli_main([*cli, "keys", "create", "second"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert cli_main([*cli, "keys", "list"]) == 0
    assert {k["id"] for k in json.loads(capsys.readouterr().out)} == {first["id"], second["id"]}
    assert cli_main([*cli, "keys", "rotate", second["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["secret"] != second["secret"]
    assert cli_main([*cli, "keys", "revoke", second["id"]]) == 0
    capsys.readouterr()

    assert public.post(f"/api/keys/{second['id']}/rotate", headers=_bearer(first["secret"])).status_code == 409
    listed = _host_keys(stack, "list")
    assert listed.returncode == 0 and "revoked" in listed.stdout and "first" in listed.stdout
    assert cli_main([*cli, "keys", "revoke", first["id"]]) == 0
    # Revoking every key never opens the service again.
    assert public.get("/api/models/").status_code == 401
    assert public.get("/api/models/", headers=_bearer(first["secret"])).status_code == 401
