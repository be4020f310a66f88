"""Fault: zips the consumer cannot extract (Deflate64, duplicates, `a` and `a/b`, `.` names, bombs of small entries).

Each is refused at upload, as a task input and as a model zip, with a 4xx whose message names the entry, and leaves
no task, no model and no file; before, they were accepted and failed late, after up to three downloads.
"""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from private_api.config import Settings
from tests.faults.bad_zips import BAD_ZIPS
from tests.private_api.helpers import add_model


def _refused(response: httpx.Response, words: tuple[str, ...], what: str) -> None:
    assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, (what, word, detail)


def test_each_bad_zip_is_refused_at_upload_naming_the_entry(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    for case, (data, words) in BAD_ZIPS.items():
        task = api.post("/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("in.zip", data)})
        _refused(task, words, f"task input: {case}")
        model = api.post(
            "/api/models",
            params={"container_tag": "busybox", "human_readable_id": "withzip", "model_available": True},
            files={"zip_file": ("m.zip", data)},
        )
        _refused(model, words, f"new model zip: {case}")
        update = api.patch("/api/models/m", files={"zip_file": ("m.zip", data)})
        _refused(update, words, f"replacing a model zip: {case}")
    assert api.get("/api/tasks").json()["total"] == 0
    models = api.get("/api/models").json()
    assert [(m["human_readable_id"], m["model_available"]) for m in models] == [("m", False)]
    for folder in ("inputs", "models", "tmp"):
        assert list((settings.data_dir / folder).iterdir()) == [], folder
