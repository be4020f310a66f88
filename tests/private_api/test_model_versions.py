"""Model lifecycle: every change is a version, a task runs the version of its submission, old zips go when no task
needs them, a model with waiting tasks is deleted only with ?force=true (on SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from private_api.auth import Caller, current_caller
from private_api.config import Settings
from private_api.orm import AuditEntry
from tests.private_api.helpers import add_model, make_zip, submit


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _claim(api: TestClient, uid: str, consumer: str = "c1") -> dict[str, Any]:
    response = api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": consumer})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _finish(api: TestClient, uid: str, consumer: str = "c1") -> None:
    body = {"consumer_id": consumer, "attempt": 1, "status": "finished"}
    assert api.post(f"/internal/tasks/{uid}/finish", json=body).status_code == 200


def _stored(settings: Settings) -> set[bytes]:
    return {p.read_bytes() for p in (settings.data_dir / "models").iterdir()}


def _audit(api: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    with api.app.state.sessions() as session:  # type: ignore[attr-defined]
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        return [(r.action, r.target, json.loads(r.detail)) for r in rows]


def _put(api: TestClient, hid: str, zip_bytes: bytes | None = None, **params: Any) -> Any:
    files = {"zip_file": ("model.zip", zip_bytes)} if zip_bytes is not None else None
    return api.put(f"/api/models/{hid}", params={"container_tag": "busybox:stable", **params}, files=files)


def test_every_change_is_a_version_and_get_shows_them(api: TestClient, settings: Settings) -> None:
    first, second = make_zip({"w.txt": "1"}), make_zip({"w.txt": "2"})
    assert add_model(api, "seg", zip_bytes=first, timeout=77, cpus=2)["version"] == 1
    put = _put(api, "seg", second, use_gpu=False, description="v2")
    assert put.status_code == 200, put.text
    v2 = put.json()
    # PUT is the whole model again: what it leaves out gets the default, as when posting it.
    assert (v2["version"], v2["zip_sha256"], v2["timeout"], v2["cpus"]) == (2, _sha(second), 3600, 4.0)
    assert _stored(settings) == {second}  # no task needs version 1's zip
    patched = api.patch("/api/models/seg", params={"timeout": 60}).json()
    assert (patched["version"], patched["zip_sha256"], patched["description"]) == (3, _sha(second), "v2")
    assert [m["version"] for m in api.get("/api/models/").json()] == [3]
    shown = api.get("/api/models/seg/").json()
    assert shown["version"] == 3
    versions = {v["version"]: v for v in shown["versions"]}
    assert [v["version"] for v in shown["versions"]] == [3, 2, 1]
    assert versions[3]["current"] and not versions[2]["current"]
    assert (versions[1]["zip_sha256"], versions[1]["zip_stored"], versions[1]["timeout"]) == (_sha(first), False, 77)
    assert versions[2]["zip_stored"] is True and versions[2]["use_gpu"] is False
    assert all(v["created_at"] and v["tasks"] == 0 for v in shown["versions"])
    actions = [(action, target, detail.get("version")) for action, target, detail in _audit(api)]
    assert actions == [("model.create", "seg", 1), ("model.update", "seg", 2), ("model.update", "seg", 3)]


def test_a_task_runs_the_version_it_was_submitted_with(api: TestClient, settings: Settings) -> None:
    first, second = make_zip({"w.txt": "1"}), make_zip({"w.txt": "2"})
    add_model(api, "seg", zip_bytes=first, timeout=77)
    old = submit(api, "seg")
    assert _put(api, "seg", second, container_tag="busybox:v2", timeout=99).status_code == 200
    new = submit(api, "seg")
    assert _stored(settings) == {first, second}  # the pending task still needs version 1's zip
    claimed = _claim(api, old)
    assert (claimed["model"]["version"], claimed["model"]["container_tag"]) == (1, "busybox:stable")
    assert (claimed["model"]["zip_sha256"], claimed["model"]["timeout"]) == (_sha(first), 77)
    assert set(claimed["model_zips_needed"]) == {_sha(first), _sha(second)}
    fetched = api.get("/internal/models/seg/zip", params={"sha256": _sha(first)})
    assert fetched.content == first and fetched.headers["x-zip-sha256"] == _sha(first)
    assert api.get("/internal/models/seg/zip").content == second  # without the parameter: the current zip
    assert api.get("/internal/models/seg/zip", params={"sha256": "0" * 64}).status_code == 550
    assert api.get(f"/api/tasks/{old}/status").json()["model_version"] == 1
    assert api.get(f"/api/tasks/{new}/status").json()["model_version"] == 2
    counts = {v["version"]: (v["tasks"], v["active_tasks"]) for v in api.get("/api/models/seg").json()["versions"]}
    assert counts == {1: (1, 1), 2: (1, 1)}
    _finish(api, old)
    assert _stored(settings) == {second}  # version 1's last task ended: its zip is gone
    claimed = _claim(api, new, "c2")
    assert (claimed["model"]["version"], claimed["model"]["container_tag"]) == (2, "busybox:v2")
    assert claimed["model_zips_needed"] == [_sha(second)]


def test_cancelling_the_last_task_of_an_old_version_removes_its_zip(api: TestClient, settings: Settings) -> None:
    first, second = make_zip({"w.txt": "1"}), make_zip({"w.txt": "2"})
    add_model(api, "seg", zip_bytes=first)
    uid = submit(api, "seg")
    assert _put(api, "seg", second).status_code == 200
    unchanged = _put(api, "seg")  # no zip and model_available unset: the zip stays
    assert unchanged.json()["zip_sha256"] == _sha(second)
    assert _stored(settings) == {first, second}
    assert api.delete(f"/api/tasks/{uid}").status_code == 200
    assert _stored(settings) == {second}
    assert _put(api, "seg", model_available="false").json()["model_available"] is False
    assert _stored(settings) == set()


def test_delete_answers_409_while_tasks_wait_and_force_cancels_them(api: TestClient, settings: Settings) -> None:
    add_model(api, "seg", zip_bytes=make_zip())
    running, pending = submit(api, "seg"), submit(api, "seg")
    _claim(api, running)
    refused = api.delete("/api/models/seg")
    assert refused.status_code == 409
    assert (refused.json()["pending"], refused.json()["running"]) == (1, 1)
    assert "force=true" in refused.json()["detail"]
    assert api.get("/api/models/seg").status_code == 200 and _stored(settings)
    deleted = api.delete("/api/models/seg/", params={"force": "true"})
    assert deleted.status_code == 200, deleted.text
    assert sorted(deleted.json()["cancelled"]) == sorted([running, pending])
    for uid in (running, pending):
        status = api.get(f"/api/tasks/{uid}/status").json()
        assert status["status"] == "cancelled" and "deleted" in status["error"]
    beat = api.post(f"/internal/tasks/{running}/heartbeat", json={"consumer_id": "c1", "attempt": 1})
    assert beat.json()["status"] == "cancelled"  # the consumer stops the container
    assert api.get("/api/models/seg").status_code == 550
    assert _stored(settings) == set()
    actions = [(action, target) for action, target, _ in _audit(api) if action != "task.create"]
    assert sorted(actions[-3:-1]) == sorted([("task.cancel", running), ("task.cancel", pending)])
    assert actions[-1] == ("model.delete", "seg")
    add_model(api, "idle")
    assert api.delete("/api/models/idle").status_code == 200  # no task waits: no force needed


def test_bad_new_versions_are_refused_and_change_nothing(api: TestClient) -> None:
    add_model(api, "seg")
    assert _put(api, "nope").status_code == 550
    assert _put(api, "seg", human_readable_id="other").status_code == 422
    assert api.put("/api/models/seg", params={"timeout": 5}).status_code == 422  # container_tag is required
    assert _put(api, "seg", model_available="true").status_code == 422  # no zip sent, none stored
    assert _put(api, "seg", make_zip(), model_available="false").status_code == 422
    assert _put(api, "seg", mem_limit="lots").status_code == 422
    assert api.get("/api/models/seg").json()["version"] == 1


def test_public_calls_change_models_only_with_an_admin_key(api: TestClient) -> None:
    add_model(api, "seg")
    app = api.app
    app.dependency_overrides[current_caller] = lambda: Caller(owner="k1", key_id="k1", public=True, admin=False)  # type: ignore[attr-defined]
    try:
        assert _put(api, "seg").status_code == 403
        assert api.patch("/api/models/seg", params={"timeout": 5}).status_code == 403
        assert api.delete("/api/models/seg").status_code == 403
        assert api.get("/api/models/seg").status_code == 200
        app.dependency_overrides[current_caller] = lambda: Caller(owner="k2", key_id="k2", public=True, admin=True)  # type: ignore[attr-defined]
        assert _put(api, "seg", description="by k2").status_code == 200
    finally:
        app.dependency_overrides.clear()  # type: ignore[attr-defined]
    versions = api.get("/api/models/seg").json()["versions"]
    assert (versions[0]["version"], versions[0]["created_by"]) == (2, "k2")
