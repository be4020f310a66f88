"""The calls job consumers make: claim, heartbeat, output, logs, finish, release."""

from __future__ import annotations

import hashlib
import time

from fastapi.testclient import TestClient

from private_api.config import Settings
from tests.private_api.helpers import add_model, make_zip, submit


def _claim(api: TestClient, uid: str, consumer: str = "c1") -> tuple[int, dict]:
    response = api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": consumer})
    return response.status_code, response.json()


def _finish(api: TestClient, uid: str, consumer: str = "c1", **fields: object) -> int:
    body = {"consumer_id": consumer, "status": "finished", **fields}
    return api.post(f"/internal/tasks/{uid}/finish", json=body).status_code


def test_claim_gives_task_and_model(api: TestClient) -> None:
    model_zip = make_zip({"w.bin": b"w"})
    add_model(api, "m", zip_bytes=model_zip, timeout=77)
    uid = submit(api, "m")
    code, body = _claim(api, uid)
    assert code == 200
    assert body["task"]["status"] == "running" and body["task"]["attempt"] == 1
    assert body["task"]["consumer_id"] == "c1"
    assert body["model"]["timeout"] == 77 and body["model"]["zip_sha256"] == hashlib.sha256(model_zip).hexdigest()
    fetched = api.get("/internal/models/m/zip")
    assert fetched.content == model_zip
    assert fetched.headers["x-zip-sha256"] == body["model"]["zip_sha256"]
    assert api.get(f"/api/tasks/{uid}").status_code == 551
    assert api.get(f"/api/tasks/{uid}/status").json()["status"] == "running"


def test_second_consumer_is_refused_while_the_lease_is_live(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    assert _claim(api, uid, "c1")[0] == 200
    code, body = _claim(api, uid, "c2")
    assert code == 409 and body["status"] == "running"


def test_restarted_consumer_reclaims_with_next_attempt(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid, "c1")
    code, body = _claim(api, uid, "c1")
    assert code == 200 and body["task"]["attempt"] == 2


def test_expired_lease_goes_to_another_consumer_then_attempts_run_out(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid, "c1")
    time.sleep(settings.lease_seconds + 0.5)
    code, body = _claim(api, uid, "c2")
    assert code == 200 and body["task"]["attempt"] == 2
    time.sleep(settings.lease_seconds + 0.5)
    code, body = _claim(api, uid, "c3")
    assert code == 409 and body["status"] == "failed"
    failed = api.get(f"/api/tasks/{uid}")
    assert failed.status_code == 552
    assert "gave up after 2 attempts" in failed.json()["reason"]


def test_heartbeat_keeps_the_lease_and_reports_cancel(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid, "c1")
    for _ in range(3):
        time.sleep(settings.lease_seconds / 2)
        beat = api.post(f"/internal/tasks/{uid}/heartbeat", json={"consumer_id": "c1"})
        assert beat.json() == {"status": "running"}
    assert _claim(api, uid, "c2")[0] == 409
    assert api.post(f"/internal/tasks/{uid}/heartbeat", json={"consumer_id": "c2"}).status_code == 409
    assert api.delete(f"/api/tasks/{uid}").status_code == 200
    assert api.post(f"/internal/tasks/{uid}/heartbeat", json={"consumer_id": "c1"}).json() == {"status": "cancelled"}
    assert _finish(api, uid) == 409
    assert _claim(api, uid, "c2") == (409, {"detail": "task is cancelled", "status": "cancelled"})


def test_finished_task_serves_its_output(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    output = make_zip({"out/nested/mask.nii": b"\x07" * 3000, "out/report.json": "{}"})
    stored = api.put(f"/internal/tasks/{uid}/output", content=output, headers={"Content-Type": "application/zip"})
    assert stored.status_code == 200 and stored.json() == {"size": len(output)}
    assert _finish(api, uid, exit_code=0) == 200
    result = api.get(f"/api/tasks/{uid}")
    assert result.status_code == 200 and result.content == output
    assert result.headers["content-type"] == "application/zip"
    status = api.get(f"/api/tasks/{uid}/status").json()
    assert status["status"] == "finished" and status["exit_code"] == 0 and status["output_size"] == len(output)
    assert status["finished_at"] is not None
    assert _claim(api, uid, "c9") == (409, {"detail": "task is finished", "status": "finished"})


def test_finished_without_output_is_553(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    assert _finish(api, uid, exit_code=0) == 200
    assert api.get(f"/api/tasks/{uid}").status_code == 553


def test_failed_task_says_why_with_log_tail(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    log = "".join(f"line {i}\n" for i in range(500)) + "Traceback: the model broke\n"
    assert api.put(f"/internal/tasks/{uid}/logs", content=log.encode()).status_code == 200
    body = {"consumer_id": "c1", "status": "failed", "reason": "exited with code 3", "exit_code": 3}
    assert api.post(f"/internal/tasks/{uid}/finish", json=body).status_code == 200
    failed = api.get(f"/api/tasks/{uid}")
    assert failed.status_code == 552
    detail = failed.json()
    assert detail["reason"] == "exited with code 3" and detail["exit_code"] == 3
    assert detail["log_tail"].endswith("Traceback: the model broke\n")
    logs = api.get(f"/api/tasks/{uid}/logs").text
    assert len(logs.encode()) == settings.max_log_bytes and logs.endswith("the model broke\n")


def test_output_refused_unless_running_and_a_zip(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    assert api.put(f"/internal/tasks/{uid}/output", content=make_zip()).status_code == 409
    _claim(api, uid)
    assert api.put(f"/internal/tasks/{uid}/output", content=b"not a zip").status_code == 400
    assert not (settings.data_dir / "outputs" / f"{uid}.zip").exists()
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_release_puts_task_back_and_the_attempt_counts(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid, "c1")
    released = api.post(f"/internal/tasks/{uid}/release", json={"consumer_id": "c1", "reason": "shutting down"})
    assert released.status_code == 200
    status = api.get(f"/api/tasks/{uid}/status").json()
    assert status["status"] == "pending" and status["attempt"] == 1 and status["error"] == "shutting down"
    code, body = _claim(api, uid, "c2")
    assert code == 200 and body["task"]["attempt"] == 2
    api.post(f"/internal/tasks/{uid}/release", json={"consumer_id": "c2", "reason": "docker engine away"})
    code, body = _claim(api, uid, "c3")
    assert code == 409 and body["status"] == "failed"
    reason = api.get(f"/api/tasks/{uid}").json()["reason"]
    assert reason == "gave up after 2 attempts; last problem: docker engine away"


def test_claim_of_unknown_task_is_404_and_deleted_model_fails_task(api: TestClient) -> None:
    assert _claim(api, "A" * 32)[0] == 404
    assert api.get(f"/internal/tasks/{'A' * 32}/input").status_code == 404
    add_model(api, "m")
    uid = submit(api, "m")
    api.delete("/api/models/m")
    code, body = _claim(api, uid)
    assert code == 409 and body["status"] == "failed"
