"""A fair share for every key: quotas (429 + Retry-After), fair order at claim, one's own task list, Idempotency-Key.

Owners are driven with X-Owner (internal calls); where a key's quota or admin flag matters, the test either writes a
row in api_keys (what the claim reads) or swaps the Caller dependency (what the routes read).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, timedelta
from typing import Any

import httpx
import pytest
from fastapi import Header
from fastapi.testclient import TestClient
from sqlalchemy import update

from private_api.auth import Caller, current_caller
from private_api.config import Settings
from private_api.main import create_app
from private_api.orm import ApiKey, IdempotencyKey, Task, utcnow
from private_api.receiving import Received
from private_api.routes.submit import _store
from tests.private_api.conftest import AUTH, LiveServer
from tests.private_api.helpers import add_model, make_zip

KEY_A, KEY_B = "k" + "a" * 16, "k" + "b" * 16


def _as(owner: str | None) -> dict[str, str]:
    return {"X-Owner": owner} if owner else {}


def _submit(api: TestClient | httpx.Client, hid: str, owner: str | None, key: str | None = None) -> httpx.Response:
    headers = {**_as(owner), **({"Idempotency-Key": key} if key else {})}
    return api.post(
        "/api/tasks/", params={"human_readable_id": hid}, files={"zip_file": ("in.zip", make_zip())}, headers=headers
    )


def _uid(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(json.loads(response.content))


def _claim(api: TestClient, uid: str, consumer: str) -> tuple[int, dict[str, Any]]:
    response = api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": consumer, "consumer_name": consumer})
    return response.status_code, response.json()


def _finish(api: TestClient, uid: str, consumer: str) -> None:
    body = {"consumer_id": consumer, "attempt": 1, "status": "finished"}
    assert api.post(f"/internal/tasks/{uid}/finish", json=body).status_code == 200


def _add_key(api: TestClient, key_id: str, **quotas: int) -> None:
    """A row in api_keys (what the claim reads a key's max_running_tasks from)."""
    with api.app.state.sessions() as session:  # type: ignore[attr-defined]
        session.add(ApiKey(id=key_id, name=key_id, secret_sha256=key_id * 2, **quotas))
        session.commit()


def _task_row(api: TestClient, uid: str) -> Task:
    with api.app.state.sessions() as session:  # type: ignore[attr-defined]
        task = session.query(Task).filter(Task.uid == uid).one()
        session.expunge(task)
        return task


@pytest.fixture
def fair_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"key_max_queued_tasks": 2, "key_running_wait_seconds": 0.3})


@pytest.fixture
def fair(fair_settings: Settings) -> Iterator[TestClient]:
    """A private API whose callers are X-Owner with the quotas and admin flag of X-Test-Quota / X-Test-Admin."""
    app = create_app(fair_settings)

    async def caller(
        x_owner: str | None = Header(default=None),
        x_test_quota: int | None = Header(default=None),
        x_test_admin: str | None = Header(default=None),
    ) -> Caller:
        return Caller(owner=x_owner, key_id=x_owner, admin=x_test_admin != "no", max_queued_tasks=x_test_quota)

    app.dependency_overrides[current_caller] = caller
    with TestClient(app, headers=AUTH) as client:
        yield client


# --- quotas ----------------------------------------------------------------------------------------------------------


def test_a_key_past_its_queued_quota_gets_429_with_retry_after(fair: TestClient) -> None:
    add_model(fair, "m")
    first = _uid(_submit(fair, "m", KEY_A))
    _uid(_submit(fair, "m", KEY_A))
    refused = _submit(fair, "m", KEY_A)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 0 and "max_queued_tasks" in refused.json()["detail"]
    _uid(_submit(fair, "m", KEY_B))  # another key is not held up
    for _ in range(3):
        _uid(_submit(fair, "m", None))  # an open service (no owner) has no quota
    quota_of_one = {**_as("kc"), "X-Test-Quota": "1"}
    files = {"zip_file": ("in.zip", make_zip())}
    _uid(fair.post("/api/tasks/", params={"human_readable_id": "m"}, files=files, headers=quota_of_one))
    again = fair.post("/api/tasks/", params={"human_readable_id": "m"}, files=files, headers=quota_of_one)
    assert again.status_code == 429  # the key's own max_queued_tasks overrides KEY_MAX_QUEUED_TASKS
    assert _claim(fair, first, "c1")[0] == 200  # a started task no longer counts
    _uid(_submit(fair, "m", KEY_A))


def test_the_quota_is_checked_before_the_body_is_read(fair_settings: Settings) -> None:
    with LiveServer(fair_settings) as live, httpx.Client(base_url=live.url, headers=AUTH) as client:
        add_model(client, "m")  # type: ignore[arg-type]
        for _ in range(2):
            _uid(_submit(client, "m", KEY_A))
        head = (
            f"POST /api/tasks?human_readable_id=m HTTP/1.1\r\nHost: x\r\nX-Internal-Token: {AUTH['X-Internal-Token']}"
            f"\r\nX-Owner: {KEY_A}\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: {5 * 1024**3}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
            sock.sendall(head)  # 5 GB announced, none sent: the answer must not wait for them
            answer = sock.recv(4096).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 429") and "retry-after:" in answer.lower(), answer


# --- fair order ------------------------------------------------------------------------------------------------------


def test_claims_go_round_robin_across_owners_fifo_within_each(fair: TestClient) -> None:
    add_model(fair, "m")
    a = [_uid(_submit(fair, "m", KEY_A)) for _ in range(2)]
    b = [_uid(_submit(fair, "m", KEY_B)) for _ in range(2)]
    unowned = _uid(_submit(fair, "m", None))
    messages, started = [*a, *b, unowned], []
    while messages:  # one consumer takes the messages in queue order; a message not handed out is published again
        named = messages.pop(0)
        claimed_at = utcnow()
        code, body = _claim(fair, named, "c1")
        if code != 200:
            assert body["status"] in ("running", "finished"), body
            continue
        handed = body["task"]["uid"]
        if handed != named:
            # The outbox sends its message again (the claim wakes it: it may have done so already).
            published = _task_row(fair, named).published_at
            assert published is None or published.replace(tzinfo=UTC) >= claimed_at
            messages.append(named)
        started.append(handed)
        _finish(fair, handed, "c1")
    # The task without an owner (an open service's) is one more group: it started nothing yet, so it goes third.
    assert started == [a[0], b[0], unowned, a[1], b[1]]


def test_a_repeated_claim_after_a_lost_answer_gets_the_task_it_was_handed(fair: TestClient) -> None:
    add_model(fair, "m")
    a1, a2 = _uid(_submit(fair, "m", KEY_A)), _uid(_submit(fair, "m", KEY_A))
    b1 = _uid(_submit(fair, "m", KEY_B))
    assert _claim(fair, a1, "c1")[1]["task"]["uid"] == a1
    _finish(fair, a1, "c1")
    first = _claim(fair, a2, "c2")[1]["task"]
    again = _claim(fair, a2, "c2")[1]["task"]
    assert first["uid"] == again["uid"] == b1 and first["attempt"] == again["attempt"] == 1


def test_owners_at_max_running_tasks_wait_while_others_run(fair: TestClient) -> None:
    add_model(fair, "m")
    _add_key(fair, KEY_A, max_running_tasks=1)
    a1, a2 = _uid(_submit(fair, "m", KEY_A)), _uid(_submit(fair, "m", KEY_A))
    b1 = _uid(_submit(fair, "m", KEY_B))
    assert _claim(fair, a1, "c1")[1]["task"]["uid"] == a1
    assert _claim(fair, a2, "c2")[1]["task"]["uid"] == b1  # A runs its one task: B's goes first
    assert _task_row(fair, a2).not_before is not None  # and A's is offered again a little later
    time.sleep(0.4)
    code, body = _claim(fair, a2, "c3")  # nobody else waits: A's task still waits for A's running one
    assert code == 409 and body["status"] == "pending" and "max_running_tasks (1)" in body["detail"]
    row = _task_row(fair, a2)
    assert row.published_at is None and row.not_before is not None and row.not_before > utcnow()
    _finish(fair, a1, "c1")
    time.sleep(0.4)
    assert _claim(fair, a2, "c3")[1]["task"]["uid"] == a2


def test_a_cpu_message_never_hands_out_a_gpu_task(fair: TestClient) -> None:
    add_model(fair, "cpu", use_gpu=False)
    add_model(fair, "gpu", use_gpu=True)
    a1, a2 = _uid(_submit(fair, "cpu", KEY_A)), _uid(_submit(fair, "cpu", KEY_A))
    _uid(_submit(fair, "gpu", KEY_B))  # B never started anything: first in line, but in the other queue
    assert _claim(fair, a1, "c1")[1]["task"]["uid"] == a1
    assert _claim(fair, a2, "c2")[1]["task"]["uid"] == a2


# --- one's own tasks -------------------------------------------------------------------------------------------------


def test_the_list_shows_ones_own_tasks_newest_first_and_admins_all(fair: TestClient) -> None:
    add_model(fair, "m")
    add_model(fair, "n")
    mine = [_uid(_submit(fair, "m", KEY_A)), _uid(_submit(fair, "n", KEY_A))]
    theirs = _uid(_submit(fair, "m", KEY_B))
    unowned = _uid(_submit(fair, "m", None))
    page = fair.get("/api/tasks/", headers=_as(KEY_A)).json()
    assert page["total"] == 2 and [t["uid"] for t in page["items"]] == mine[::-1]
    assert all(t["owner"] == KEY_A for t in page["items"])
    paged = fair.get("/api/tasks", params={"limit": 1, "offset": 1}, headers=_as(KEY_A)).json()
    assert paged == {"items": paged["items"], "total": 2} and paged["items"][0]["uid"] == mine[0]
    assert fair.get("/api/tasks", params={"model": "n"}, headers=_as(KEY_A)).json()["total"] == 1
    assert fair.get("/api/tasks", params={"status": "running"}, headers=_as(KEY_A)).json()["total"] == 0
    assert [t["uid"] for t in fair.get("/api/tasks", headers=_as(KEY_B)).json()["items"]] == [theirs]
    everyone = fair.get("/api/tasks", params={"all": "true"}, headers=_as(KEY_B)).json()
    assert [t["uid"] for t in everyone["items"]] == [unowned, theirs, *mine[::-1]]  # owner NULL: only with all
    refused = fair.get("/api/tasks", params={"all": "true"}, headers={**_as(KEY_A), "X-Test-Admin": "no"})
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    assert fair.get("/api/tasks", params={"limit": 501}, headers=_as(KEY_A)).status_code == 422


# --- Idempotency-Key -------------------------------------------------------------------------------------------------


def test_a_repeated_idempotency_key_answers_the_same_uid(fair: TestClient) -> None:
    add_model(fair, "m")
    add_model(fair, "n")
    uid = _uid(_submit(fair, "m", KEY_A, key="scan-001"))
    assert _uid(_submit(fair, "m", KEY_A, key="scan-001")) == uid
    other = _submit(fair, "n", KEY_A, key="scan-001")
    assert other.status_code == 409 and "another submission" in other.json()["detail"]
    assert _uid(_submit(fair, "m", KEY_B, key="scan-001")) != uid  # per owner
    assert fair.get("/api/tasks", headers=_as(KEY_A)).json()["total"] == 1
    with fair.app.state.sessions() as session:  # type: ignore[attr-defined]
        session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25)))
        session.commit()
    assert _uid(_submit(fair, "m", KEY_A, key="scan-001")) != uid  # after 24 h the key is new again
    assert _submit(fair, "m", KEY_A, key="with space").status_code == 422


def test_the_same_key_after_a_dropped_answer_and_concurrently_makes_one_task(fair_settings: Settings) -> None:
    with LiveServer(fair_settings) as live, httpx.Client(base_url=live.url, headers=AUTH, timeout=30) as client:
        add_model(client, "m")  # type: ignore[arg-type]
        body = b'--xx\r\nContent-Disposition: form-data; name="zip_file"; filename="a.zip"\r\n\r\n'
        body += make_zip() + b"\r\n--xx--\r\n"
        head = (
            f"POST /api/tasks?human_readable_id=m HTTP/1.1\r\nHost: x\r\nX-Internal-Token: {AUTH['X-Internal-Token']}"
            f"\r\nX-Owner: {KEY_A}\r\nIdempotency-Key: upload-1\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.sendall(head + body)  # the whole body; once it is stored the client goes away, its answer unread
            deadline = time.monotonic() + 10
            while client.get("/api/tasks", headers=_as(KEY_A)).json()["total"] == 0:
                assert time.monotonic() < deadline, "the first request's task was not stored"
                time.sleep(0.1)
        (stored,) = client.get("/api/tasks", headers=_as(KEY_A)).json()["items"]
        assert _uid(_submit(client, "m", KEY_A, key="upload-1")) == stored["uid"]

        answers: list[str] = []
        threads = [
            threading.Thread(target=lambda: answers.append(_uid(_submit(client, "m", KEY_B, key="twice"))))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(answers) == 3 and len(set(answers)) == 1
        assert client.get("/api/tasks", headers=_as(KEY_B)).json()["total"] == 1
    assert len(list((fair_settings.data_dir / "inputs").iterdir())) == 2


def test_the_loser_of_a_race_on_one_key_answers_the_winners_uid(fair: TestClient, fair_settings: Settings) -> None:
    """Two requests with one key that both passed the check before their bodies: the second to store gets the
    first's uid, and its own input file is gone."""
    add_model(fair, "m")
    storage = fair.app.state.storage  # type: ignore[attr-defined]
    sessions = fair.app.state.sessions  # type: ignore[attr-defined]
    caller = Caller(owner=KEY_A)
    uids = []
    for uid in ("A" * 32, "B" * 32):
        temp = storage.temp_path()
        temp.write_bytes(make_zip())
        uids.append(_store(sessions, storage, uid, "m", caller, Received(temp, temp.stat().st_size, "0" * 64), "race"))
    assert uids == ["A" * 32, "A" * 32]
    assert [p.name for p in (fair_settings.data_dir / "inputs").iterdir()] == [f"{'A' * 32}.zip"]
    assert fair.get("/api/tasks", headers=_as(KEY_A)).json()["total"] == 1
