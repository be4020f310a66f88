"""Model ids that name folders (`.`, `..`) are refused wherever an id is given; ids that merely hold dots are fine."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize("hid", [".", ".."])
def test_dot_ids_are_refused(api: TestClient, hid: str) -> None:
    response = api.post("/api/models/", params={"container_tag": "x:1", "human_readable_id": hid})
    assert response.status_code == 422, response.text
    assert api.get("/api/models/").json() == []
    response = api.post("/api/tasks/", params={"human_readable_id": hid}, files={"zip_file": ("i.zip", b"PK")})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("hid", ["...", ".hidden", "..x", "a.b", "v1.2-rc_3"])
def test_ids_with_dots_are_kept(api: TestClient, hid: str) -> None:
    response = api.post("/api/models/", params={"container_tag": "x:1", "human_readable_id": hid})
    assert response.status_code == 200, response.text
    assert response.json()["human_readable_id"] == hid
