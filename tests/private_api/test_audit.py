"""The audit trail on SQLite and PostgreSQL: a row for each change (who, what, when), newest first, paged, filtered,
for admins only."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from private_api.auth import Caller, current_caller
from tests.private_api.helpers import add_model, make_zip, submit

ALICE = {"X-Owner": "kalice0000000000"}
BOB = {"X-Owner": "kbob000000000000"}


def _audit(api: TestClient, **params: Any) -> dict[str, Any]:
    answer = api.get("/api/audit/", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_each_change_leaves_one_row_newest_first(api: TestClient) -> None:
    api.headers.update(ALICE)
    add_model(api, "m", zip_bytes=make_zip({"w.bin": "w"}))
    assert api.patch("/api/models/m", params={"description": "new"}).status_code == 200
    uid = submit(api, "m")
    assert api.delete(f"/api/tasks/{uid}").status_code == 200
    api.headers.update(BOB)
    assert api.delete("/api/models/m").status_code == 200
    api.get("/api/tasks/", params={"limit": 5})  # reading leaves no row

    page = _audit(api)
    actions = [(row["action"], row["target"], row["key_id"]) for row in page["items"]]
    assert actions == [
        ("model.delete", "m", BOB["X-Owner"]),
        ("task.cancel", uid, ALICE["X-Owner"]),
        ("task.create", uid, ALICE["X-Owner"]),
        ("model.update", "m", ALICE["X-Owner"]),
        ("model.create", "m", ALICE["X-Owner"]),
    ]
    assert page["total"] == 5
    ids = [row["id"] for row in page["items"]]
    assert ids == sorted(ids, reverse=True)
    stamps = [row["at"] for row in page["items"]]
    assert stamps == sorted(stamps, reverse=True)
    by_action = {row["action"]: row for row in page["items"]}
    assert by_action["task.create"]["detail"]["model"] == "m"
    assert "description" in by_action["model.update"]["detail"]["fields"]
    assert by_action["model.create"]["detail"]["zip_sha256"]


def test_paging_and_filters(api: TestClient) -> None:
    api.headers.update(ALICE)
    add_model(api, "m")
    uids = [submit(api, "m") for _ in range(2)]
    api.headers.update(BOB)
    uids.append(submit(api, "m"))
    assert api.delete(f"/api/tasks/{uids[2]}").status_code == 200

    assert _audit(api, action="task.create")["total"] == 3
    first = _audit(api, action="task.create", limit=2)
    second = _audit(api, action="task.create", limit=2, offset=2)
    assert [row["target"] for row in first["items"] + second["items"]] == uids[::-1]
    assert first["total"] == second["total"] == 3
    bob = _audit(api, key_id=BOB["X-Owner"])
    assert bob["total"] == 2 and [row["action"] for row in bob["items"]] == ["task.cancel", "task.create"]
    assert _audit(api, target=uids[2])["total"] == 2
    assert _audit(api, action="key.create") == {"items": [], "total": 0}
    assert api.get("/api/audit/", params={"limit": 501}).status_code == 422
    assert api.get("/api/audit", params={"offset": -1}).status_code == 422


def test_only_admin_keys_read_the_audit(api: TestClient) -> None:
    app: Any = api.app
    app.dependency_overrides[current_caller] = lambda: Caller(owner="kuser", key_id="kuser", admin=False, public=True)
    try:
        answer = api.get("/api/audit/")
        assert answer.status_code == 403 and "admin" in answer.json()["detail"]
    finally:
        app.dependency_overrides.clear()
    assert api.get("/api/audit/").status_code == 200
