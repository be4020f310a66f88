"""Model registration, listing, update and deletion."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient

from private_api.config import Settings
from tests.private_api.helpers import add_model, make_zip, submit


def test_register_with_zip_stores_size_and_sha256(api: TestClient, settings: Settings) -> None:
    data = make_zip({"weights/w.bin": b"\x01" * 1000})
    model = add_model(api, "seg", zip_bytes=data, model_available=True, description="CT organs", use_gpu=True)
    assert model["model_available"] is True
    assert model["zip_sha256"] == hashlib.sha256(data).hexdigest()
    assert model["zip_size"] == len(data)
    assert model["use_gpu"] is True and model["description"] == "CT organs"
    stored = list((settings.data_dir / "models").iterdir())
    assert [p.read_bytes() for p in stored] == [data]


def test_register_without_zip_has_safe_default_limits(api: TestClient) -> None:
    model = add_model(api, "plain")
    assert model["model_available"] is False and model["zip_sha256"] is None
    assert model["network"] is False
    assert model["timeout"] > 0 and model["mem_limit"] and model["shm_size"] and model["cpus"] > 0


def test_run_limits_are_kept(api: TestClient) -> None:
    model = add_model(api, "lim", timeout=120, mem_limit="512m", shm_size="2g", cpus=1.5, network=True)
    assert (model["timeout"], model["mem_limit"], model["shm_size"], model["cpus"], model["network"]) == (
        120,
        "512m",
        "2g",
        1.5,
        True,
    )


def test_duplicate_id_is_409(api: TestClient) -> None:
    add_model(api, "dup")
    response = api.post("/api/models", params={"container_tag": "x:1", "human_readable_id": "dup"})
    assert response.status_code == 409
    assert "dup" in response.json()["detail"]


def test_bad_fields_are_422_with_reason(api: TestClient, settings: Settings) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"model_available": True}, "zip_file"),
        ({"mem_limit": "lots"}, "mem_limit"),
        ({"shm_size": "1x"}, "shm_size"),
        ({"timeout": 0}, "timeout"),
        ({"cpus": -1}, "cpus"),
        ({"human_readable_id": "bad id/"}, "human_readable_id"),
        ({"container_tag": "-bad tag"}, "docker image"),
    ]
    for extra, word in cases:
        params: dict[str, object] = {"container_tag": "busybox", "human_readable_id": "ok", **extra}
        response = api.post("/api/models/", params=params)
        assert response.status_code == 422, (extra, response.text)
        assert word in response.text, (extra, response.text)
    assert api.get("/api/models").json() == []
    assert list((settings.data_dir / "models").iterdir()) == []


def test_list_and_get(api: TestClient) -> None:
    add_model(api, "a")
    add_model(api, "b")
    assert [m["human_readable_id"] for m in api.get("/api/models/").json()] == ["a", "b"]
    assert api.get("/api/models/b").json()["human_readable_id"] == "b"
    assert api.get("/api/models/b/").status_code == 200
    assert api.get("/api/models/zzz").status_code == 550


def test_update_replaces_zip_and_limits(api: TestClient, settings: Settings) -> None:
    add_model(api, "u", zip_bytes=make_zip({"a": "1"}))
    new = make_zip({"a": "2"})
    response = api.patch("/api/models/u", params={"timeout": 60}, files={"zip_file": ("m.zip", new)})
    assert response.status_code == 200, response.text
    assert response.json()["zip_sha256"] == hashlib.sha256(new).hexdigest()
    assert response.json()["timeout"] == 60
    assert [p.read_bytes() for p in (settings.data_dir / "models").iterdir()] == [new]
    dropped = api.patch("/api/models/u", params={"model_available": False}).json()
    assert dropped["model_available"] is False
    assert list((settings.data_dir / "models").iterdir()) == []
    assert api.patch("/api/models/none", params={"timeout": 5}).status_code == 550


def test_delete_model_then_its_tasks_answer_550(api: TestClient, settings: Settings) -> None:
    add_model(api, "gone", zip_bytes=make_zip())
    uid = submit(api, "gone")
    assert api.delete("/api/models/gone").status_code == 409  # a pending task: only ?force=true deletes it
    assert api.delete("/api/models/gone", params={"force": "true"}).status_code == 200
    assert api.get("/api/models/gone").status_code == 550
    assert api.get(f"/api/tasks/{uid}").status_code == 550
    assert list((settings.data_dir / "models").iterdir()) == []
    assert api.delete("/api/models/gone").status_code == 550


def test_every_call_needs_the_internal_token(api: TestClient) -> None:
    for method, path in [
        ("GET", "/api/models/"),
        ("POST", "/api/tasks/"),
        ("GET", "/api/tasks/x/status"),
        ("GET", "/api/tasks/x"),  # the poll is an ordinary authenticated route
        ("POST", "/internal/tasks/x/claim"),
    ]:
        assert api.request(method, path, headers={"X-Internal-Token": "wrong"}).status_code == 401
    assert api.get("/healthz", headers={"X-Internal-Token": ""}).status_code == 200
    spec = api.get("/openapi.json", headers={"X-Internal-Token": ""})
    assert spec.status_code == 200 and "/api/tasks" in spec.json()["paths"]
    assert api.get("/docs", headers={"X-Internal-Token": ""}).status_code == 200
