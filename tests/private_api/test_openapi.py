"""The private API documents what it answers, says what it is at `/`, and refuses absurd paging with 422."""

from __future__ import annotations

from fastapi.testclient import TestClient

from common.openapi import ANSWERS, TASK_POLL_ANSWERS


def test_every_documented_status_code_is_in_the_openapi(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    poll = spec["paths"]["/api/tasks/{uid}"]["get"]["responses"]
    assert {str(code) for code in TASK_POLL_ANSWERS} <= set(poll), poll.keys()
    documented = {code for path in spec["paths"].values() for op in path.values() for code in op["responses"]}
    for code in (400, 408, 413, 422, 507, 550, 551, 552, 553, 554):
        assert str(code) in documented, f"{code} ({ANSWERS[code][0]}) is not documented"
    post = spec["paths"]["/api/tasks"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]


def test_root_names_the_service(api: TestClient) -> None:
    body = api.get("/").json()
    assert body["name"].startswith("InferenceServer") and body["version"] and body["docs"] == "/docs"


def test_absurd_paging_is_422(api: TestClient) -> None:
    for query in ("limit=0", "limit=501", "offset=-1", f"offset={2**63}", "limit=abc"):
        response = api.get(f"/api/tasks?{query}")
        assert response.status_code == 422, (query, response.text)
    assert api.get("/api/tasks?limit=500&offset=2147483647").json()["items"] == []
