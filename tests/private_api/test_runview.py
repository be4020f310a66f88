"""Run view: the phase and progress a holder reports with its heartbeat, and the provenance of its final state."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient

from tests.private_api.helpers import add_model, submit


def _claim(api: TestClient, uid: str, consumer: str = "c1") -> dict[str, Any]:
    response = api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": consumer, "consumer_name": consumer})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _beat(api: TestClient, uid: str, attempt: int = 1, consumer: str = "c1", **fields: Any) -> Any:
    return api.post(f"/internal/tasks/{uid}/heartbeat", json={"consumer_id": consumer, "attempt": attempt, **fields})


def _status(api: TestClient, uid: str) -> dict[str, Any]:
    response = api.get(f"/api/tasks/{uid}/status")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_phase_is_queued_then_preparing_at_the_claim_then_what_the_holder_says(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    pending = _status(api, uid)
    assert pending["phase"] == "queued" and pending["phase_started_at"] == pending["created_at"]
    _claim(api, uid)
    claimed = _status(api, uid)
    assert claimed["phase"] == "preparing" and claimed["progress"] is None
    assert _beat(api, uid, phase="preparing").status_code == 200
    assert _status(api, uid)["phase_started_at"] == claimed["phase_started_at"], "the same phase keeps its start"
    time.sleep(0.01)
    assert _beat(api, uid, phase="running").status_code == 200
    running = _status(api, uid)
    assert running["phase"] == "running"
    assert _at(running["phase_started_at"]) > _at(claimed["phase_started_at"])
    assert _beat(api, uid).status_code == 200, "an older consumer's beat (no phase) still renews the lease"
    assert _status(api, uid)["phase"] == "running"


def test_progress_is_stored_kept_between_beats_and_bounded(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    assert _beat(api, uid, phase="running", progress=0.42, progress_message="slice 42 of 100").status_code == 200
    status = _status(api, uid)
    assert status["progress"] == 0.42 and status["progress_message"] == "slice 42 of 100"
    assert _beat(api, uid, phase="running").status_code == 200
    assert _status(api, uid)["progress"] == 0.42, "a beat without progress keeps the last one"
    assert _beat(api, uid, progress=0.5, progress_message="x" * 5000).status_code == 200
    message = _status(api, uid)["progress_message"]
    assert len(message) == 256 and message.endswith("…")
    assert _beat(api, uid, progress=0.6).status_code == 200
    assert _status(api, uid)["progress_message"] is None, "the message goes with its fraction"
    for bad in (1.5, -0.1):
        assert _beat(api, uid, progress=bad).status_code == 422
    assert _beat(api, uid, phase="sleeping").status_code == 422
    assert _status(api, uid)["progress"] == 0.6


def test_a_stale_holder_changes_no_phase(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    assert _beat(api, uid, consumer="other", phase="uploading", progress=0.9).status_code == 409
    status = _status(api, uid)
    assert status["phase"] == "preparing" and status["progress"] is None


def test_a_released_task_is_queued_again_from_its_release(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    assert _beat(api, uid, phase="running", progress=0.3).status_code == 200
    body = {"consumer_id": "c1", "attempt": 1, "reason": "shutting down"}
    assert api.post(f"/internal/tasks/{uid}/release", json=body).status_code == 200
    status = _status(api, uid)
    assert status["status"] == "pending" and status["phase"] == "queued" and status["progress"] is None
    assert _at(status["phase_started_at"]) > _at(status["created_at"])
    _claim(api, uid, "c2")
    again = _status(api, uid)
    assert again["phase"] == "preparing" and again["attempt"] == 1


def test_finish_stores_provenance_and_the_final_state_has_no_phase(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    provenance = {
        "image": {"tag": "busybox", "id": "sha256:" + "a" * 64, "repo_digests": []},
        "exit_code": 0,
        "timings": {"running": {"started_at": "2026-01-01T00:00:00+00:00", "seconds": 1.5}},
    }
    body = {"consumer_id": "c1", "attempt": 1, "status": "finished", "exit_code": 0, "provenance": provenance}
    assert api.post(f"/internal/tasks/{uid}/finish", json=body).status_code == 200
    status = _status(api, uid)
    assert status["provenance"] == provenance
    assert status["phase"] is None and status["phase_started_at"] is None


def test_provenance_too_large_is_refused(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    body = {"consumer_id": "c1", "attempt": 1, "status": "finished", "provenance": {"junk": "x" * 70_000}}
    assert api.post(f"/internal/tasks/{uid}/finish", json=body).status_code == 422
    assert _status(api, uid)["status"] == "running"
