"""Submitting, polling, status, logs, listing and deleting tasks as users do."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from common.settings import valid_uid
from private_api.config import Settings
from private_api.routes.submit import _new_uid
from tests.private_api.helpers import add_model, make_zip, submit


def test_submit_with_either_parameter_name(api: TestClient) -> None:
    add_model(api, "m")
    first = submit(api, "m", param="human_readable_id")
    second = submit(api, "m", param="model_human_readable_id")
    for uid in (first, second):
        assert re.fullmatch(r"[A-Za-z0-9_-]{32,}", uid), uid  # url-safe, 192 random bits
        assert api.get(f"/api/tasks/{uid}").status_code == 551
    assert first != second


def test_submit_problems(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    assert api.post("/api/tasks/", files={"zip_file": ("a.zip", make_zip())}).status_code == 422
    unknown = api.post("/api/tasks/", params={"human_readable_id": "nope"}, files={"zip_file": ("a.zip", make_zip())})
    assert unknown.status_code == 550
    no_file = api.post("/api/tasks/", params={"human_readable_id": "m"})
    assert no_file.status_code == 422 and "zip_file" in no_file.json()["detail"]
    other_field = api.post("/api/tasks/", params={"human_readable_id": "m"}, files={"other": ("a.zip", make_zip())})
    assert other_field.status_code == 422
    assert api.get("/api/tasks").json()["total"] == 0
    assert list((settings.data_dir / "inputs").iterdir()) == []


def test_input_is_stored_byte_for_byte(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    data = make_zip({"a/b/c.nii": b"\x00\x01" * 5000})
    uid = submit(api, "m", data)
    assert (settings.data_dir / "inputs" / f"{uid}.zip").read_bytes() == data
    fetched = api.get(f"/internal/tasks/{uid}/input")
    assert fetched.status_code == 200 and fetched.content == data


def test_status_json(api: TestClient) -> None:
    add_model(api, "m")
    uids = [submit(api, "m") for _ in range(3)]
    status = api.get(f"/api/tasks/{uids[2]}/status").json()
    assert status["uid"] == uids[2] and status["model"] == "m" and status["status"] == "pending"
    assert status["queue_position"] == 3 and status["attempt"] == 0
    assert status["created_at"] and status["started_at"] is None and status["exit_code"] is None
    assert api.get(f"/api/tasks/{uids[2]}/status/").status_code == 200
    assert api.get("/api/tasks/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/status").status_code == 554


def test_unknown_and_malformed_uids_are_554(api: TestClient) -> None:
    for uid in ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "a.b.c", "x", "a" * 100]:
        assert api.get(f"/api/tasks/{uid}").status_code == 554, uid
        assert api.get(f"/api/tasks/{uid}/logs").status_code == 554, uid
        assert api.delete(f"/api/tasks/{uid}").status_code == 554, uid


def test_delete_removes_data_and_answers_554_after(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    assert api.delete(f"/api/tasks/{uid}/").status_code == 200
    assert not (settings.data_dir / "inputs" / f"{uid}.zip").exists()
    for path in (f"/api/tasks/{uid}", f"/api/tasks/{uid}/status", f"/api/tasks/{uid}/logs"):
        assert api.get(path).status_code == 554
    assert api.delete(f"/api/tasks/{uid}").status_code == 554


def test_list_is_paginated_and_filtered(api: TestClient) -> None:
    add_model(api, "a")
    add_model(api, "b")
    a_uids = [submit(api, "a") for _ in range(5)]
    submit(api, "b")
    page = api.get("/api/tasks/", params={"model": "a", "limit": 2, "offset": 1}).json()
    assert page["total"] == 5
    assert [t["uid"] for t in page["items"]] == [a_uids[3], a_uids[2]]
    assert api.get("/api/tasks", params={"status": "finished"}).json()["total"] == 0
    assert api.get("/api/tasks", params={"status": "pending"}).json()["total"] == 6
    assert api.get("/api/tasks", params={"status": "bogus"}).status_code == 422
    assert api.get("/api/tasks", params={"limit": 100000}).status_code == 422


def test_owner_sees_only_own_tasks(api: TestClient) -> None:
    add_model(api, "m")
    alice = {"X-Owner": "alice-hash"}
    response = api.post(
        "/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("a.zip", make_zip())}, headers=alice
    )
    uid = response.json()
    assert api.get(f"/api/tasks/{uid}", headers=alice).status_code == 551
    assert api.get(f"/api/tasks/{uid}", headers={"X-Owner": "bob-hash"}).status_code == 554
    assert api.delete(f"/api/tasks/{uid}", headers={"X-Owner": "bob-hash"}).status_code == 554
    assert api.get("/api/tasks", headers={"X-Owner": "bob-hash"}).json()["total"] == 0
    assert api.get("/api/tasks", headers=alice).json()["total"] == 1


def test_logs_of_a_new_task_are_empty(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    response = api.get(f"/api/tasks/{uid}/logs")
    assert response.status_code == 200 and response.text == ""
    assert response.headers["content-type"].startswith("text/plain")


def test_data_survives_a_restart(settings: Settings) -> None:
    from private_api.main import create_app
    from tests.private_api.conftest import AUTH

    with TestClient(create_app(settings), headers=AUTH) as first:
        add_model(first, "m")
        uid = submit(first, "m")
    with TestClient(create_app(settings), headers=AUTH) as second:
        assert second.get(f"/api/tasks/{uid}").status_code == 551
        assert second.get("/api/models/m").status_code == 200


def test_full_queue_answers_503_with_retry_after(settings: Settings) -> None:
    from private_api.main import create_app
    from tests.private_api.conftest import AUTH

    small = settings.model_copy(update={"max_queued_tasks": 2})
    with TestClient(create_app(small), headers=AUTH) as api:
        add_model(api, "m")
        first = submit(api, "m")
        submit(api, "m")
        full = api.post("/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("a.zip", make_zip())})
        assert full.status_code == 503
        assert int(full.headers["retry-after"]) > 0 and "try again later" in full.json()["detail"]
        assert api.get("/api/tasks").json()["total"] == 2
        api.delete(f"/api/tasks/{first}")
        submit(api, "m")


def test_uids_never_start_with_a_dash() -> None:
    """`inference-server tasks get <uid>` must not take a uid for an option (1 in 64 would start with `-`)."""
    uids = [_new_uid() for _ in range(3000)]
    assert all(uid[0].isalnum() and valid_uid(uid) for uid in uids)
    assert len(set(uids)) == len(uids)
