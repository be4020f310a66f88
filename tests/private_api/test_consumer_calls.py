"""The calls job consumers make: claim, heartbeat, output, logs, finish, release; all compare-and-set on the holder."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, update

from common.messages import CPU_QUEUE, GPU_QUEUE
from private_api import crud, crud_consumers
from private_api.config import Settings
from private_api.main import create_app
from private_api.orm import Consumer, Model, utcnow
from tests.private_api.conftest import AUTH
from tests.private_api.helpers import add_model, make_zip, submit


def _claim(api: TestClient, uid: str, consumer: str = "c1") -> tuple[int, dict[str, Any]]:
    body = {"consumer_id": consumer, "consumer_name": consumer.split("-")[0]}
    response = api.post(f"/internal/tasks/{uid}/claim", json=body)
    return response.status_code, response.json()


def _finish(api: TestClient, uid: str, consumer: str = "c1", attempt: int = 1, **fields: object) -> int:
    body = {"consumer_id": consumer, "attempt": attempt, "status": "finished", **fields}
    return api.post(f"/internal/tasks/{uid}/finish", json=body).status_code


def _beat(api: TestClient, uid: str, consumer: str = "c1", attempt: int = 1) -> tuple[int, dict[str, Any]]:
    response = api.post(f"/internal/tasks/{uid}/heartbeat", json={"consumer_id": consumer, "attempt": attempt})
    return response.status_code, response.json()


def _release(api: TestClient, uid: str, consumer: str = "c1", attempt: int = 1, **fields: object) -> Any:
    body = {"consumer_id": consumer, "attempt": attempt, "reason": "shutting down", **fields}
    return api.post(f"/internal/tasks/{uid}/release", json=body)


def _status(api: TestClient, uid: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"/api/tasks/{uid}/status").json()
    return body


def _holder(consumer: str = "c1", attempt: int = 1) -> dict[str, str | int]:
    return {"consumer_id": consumer, "attempt": attempt}


def test_claim_gives_task_and_model(api: TestClient) -> None:
    model_zip = make_zip({"w.bin": b"w"})
    add_model(api, "m", zip_bytes=model_zip, timeout=77)
    uid = submit(api, "m")
    code, body = _claim(api, uid, "gpu0-abc")
    assert code == 200
    assert body["task"]["status"] == "running" and body["task"]["attempt"] == 1
    assert body["task"]["consumer_id"] == "gpu0-abc" and body["task"]["consumer_name"] == "gpu0"
    assert body["model"]["timeout"] == 77 and body["model"]["zip_sha256"] == hashlib.sha256(model_zip).hexdigest()
    assert body["model"]["max_output_size"] == "50g" and body["model"]["user"] is None
    fetched = api.get("/internal/models/m/zip")
    assert fetched.content == model_zip
    assert fetched.headers["x-zip-sha256"] == body["model"]["zip_sha256"]
    assert api.get(f"/api/tasks/{uid}").status_code == 551
    status = _status(api, uid)
    assert status["status"] == "running" and status["consumer_name"] == "gpu0" and status["history"] == []


def test_a_running_task_is_refused_to_every_other_instance(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    assert _claim(api, uid, "c1")[0] == 200
    code, body = _claim(api, uid, "c2")
    assert code == 409 and body["status"] == "running"
    assert _status(api, uid)["attempt"] == 1


def test_a_repeated_claim_of_the_holder_answers_the_same_attempt(api: TestClient) -> None:
    """A claim whose answer was lost (a restart right after the commit) is retried: it must not cost an attempt."""
    add_model(api, "m")
    uid = submit(api, "m")
    assert _claim(api, uid, "c1")[0] == 200
    code, body = _claim(api, uid, "c1")
    assert code == 200 and body["task"]["attempt"] == 1 and body["task"]["consumer_id"] == "c1", body
    assert _status(api, uid)["attempt"] == 1


def test_expired_lease_goes_to_another_consumer_then_attempts_run_out(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid, "c1")
    time.sleep(settings.lease_seconds + 0.5)
    code, body = _claim(api, uid, "c2")
    assert code == 200 and body["task"]["attempt"] == 2
    assert [e["status"] for e in body["task"]["history"]] == ["lost"]
    time.sleep(settings.lease_seconds + 0.5)
    code, body = _claim(api, uid, "c3")
    assert code == 409 and body["status"] == "failed"
    failed = api.get(f"/api/tasks/{uid}")
    assert failed.status_code == 552
    assert "gave up after 2 attempts" in failed.json()["reason"] or "consumer lost 2 times" in failed.json()["reason"]


def test_heartbeat_keeps_the_lease_and_reports_cancel(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid, "c1")
    for _ in range(3):
        time.sleep(settings.lease_seconds / 2)
        assert _beat(api, uid) == (200, {"status": "running"})
    assert _claim(api, uid, "c2")[0] == 409
    code, body = _beat(api, uid, "c2")
    assert code == 409 and body["status"] == "running"
    assert _beat(api, uid, "c1", attempt=2)[0] == 409
    assert api.delete(f"/api/tasks/{uid}").status_code == 200
    assert _beat(api, uid) == (200, {"status": "cancelled"})
    assert _finish(api, uid) == 409
    assert _claim(api, uid, "c2") == (409, {"detail": "task is cancelled", "status": "cancelled"})


def test_finished_task_serves_its_output(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    output = make_zip({"out/nested/mask.nii": b"\x07" * 3000, "out/report.json": "{}"})
    stored = api.put(
        f"/internal/tasks/{uid}/output", params=_holder(), content=output, headers={"Content-Type": "application/zip"}
    )
    assert stored.status_code == 200 and stored.json() == {"size": len(output)}
    assert _finish(api, uid, exit_code=0) == 200
    result = api.get(f"/api/tasks/{uid}")
    assert result.status_code == 200 and result.content == output
    assert result.headers["content-type"] == "application/zip"
    status = _status(api, uid)
    assert status["status"] == "finished" and status["exit_code"] == 0 and status["output_size"] == len(output)
    assert status["finished_at"] is not None
    assert [(e["attempt"], e["consumer"], e["status"]) for e in status["history"]] == [(1, "c1", "finished")]
    assert _claim(api, uid, "c9") == (409, {"detail": "task is finished", "status": "finished"})
    assert _finish(api, uid) == 200  # the holder's repeated finish (its answer was lost) changes nothing
    assert _finish(api, uid, status="failed", reason="late") == 409
    assert api.get(f"/api/tasks/{uid}").content == output
    assert _status(api, uid)["history"] == status["history"]


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
    assert api.put(f"/internal/tasks/{uid}/logs", params=_holder(), content=log.encode()).status_code == 200
    assert _finish(api, uid, status="failed", reason="exited with code 3", exit_code=3) == 200
    failed = api.get(f"/api/tasks/{uid}")
    assert failed.status_code == 552
    detail = failed.json()
    assert detail["reason"] == "exited with code 3" and detail["exit_code"] == 3
    assert detail["log_tail"].endswith("Traceback: the model broke\n")
    logs = api.get(f"/api/tasks/{uid}/logs").text
    assert len(logs.encode()) == settings.max_log_bytes and logs.endswith("the model broke\n")


def test_output_refused_unless_held_and_a_zip(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    assert api.put(f"/internal/tasks/{uid}/output", params=_holder(), content=make_zip()).status_code == 409
    _claim(api, uid)
    assert api.put(f"/internal/tasks/{uid}/output", content=make_zip()).status_code == 422  # who holds it?
    assert api.put(f"/internal/tasks/{uid}/output", params=_holder(), content=b"not a zip").status_code == 400
    assert not (settings.data_dir / "outputs" / f"{uid}.zip").exists()
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_output_over_the_models_max_output_size_is_413_and_not_kept(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid)
    engine = create_engine(settings.db_url)  # the limit has no query field here: set it in the database
    with engine.begin() as connection:
        connection.execute(update(Model).values(max_output_size="4m"))
    engine.dispose()
    big = make_zip({"noise.bin": os.urandom(5 * 1024**2)})
    assert len(big) > 4 * 1024**2
    answer = api.put(f"/internal/tasks/{uid}/output", params=_holder(), content=big)
    assert answer.status_code == 413 and "max_output_size (4m)" in answer.json()["detail"]
    assert not (settings.data_dir / "outputs" / f"{uid}.zip").exists()
    assert list((settings.data_dir / "tmp").iterdir()) == []
    small = make_zip()
    assert api.put(f"/internal/tasks/{uid}/output", params=_holder(), content=small).status_code == 200


def test_release_puts_task_back_without_using_up_the_attempt(api: TestClient) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid, "c1")
    released = _release(api, uid, "c1")
    assert released.status_code == 200 and released.json() == {"status": "pending", "not_before": None}
    status = _status(api, uid)
    assert status["status"] == "pending" and status["attempt"] == 0 and status["error"] == "shutting down"
    assert status["consumer_id"] is None and status["infra_retries"] == 0
    assert [(e["consumer"], e["status"], e["infrastructure"]) for e in status["history"]] == [("c1", "released", False)]
    code, body = _claim(api, uid, "c2")
    assert code == 200 and body["task"]["attempt"] == 1
    assert _release(api, uid, "c1").status_code == 409  # the first holder is stale now
    assert _release(api, uid, "c2").status_code == 200
    assert _claim(api, uid, "c3")[1]["task"]["attempt"] == 1


def test_claim_of_unknown_task_is_404_and_deleted_model_fails_task(api: TestClient) -> None:
    assert _claim(api, "A" * 32)[0] == 404
    assert api.get(f"/internal/tasks/{'A' * 32}/input").status_code == 404
    assert _beat(api, "A" * 32)[0] == 404
    add_model(api, "m")
    uid = submit(api, "m")
    assert api.get(f"/internal/tasks/{uid}/input").status_code == 200
    api.delete("/api/models/m")
    code, body = _claim(api, uid)
    assert code == 409 and body["status"] == "failed"


def test_a_stale_holder_is_refused_every_call_and_changes_nothing(api: TestClient, settings: Settings) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid, "old")
    time.sleep(settings.lease_seconds + 0.5)
    code, body = _claim(api, uid, "new")
    assert code == 200 and body["task"]["attempt"] == 2
    before = _status(api, uid)
    stale = _holder("old", 1)
    answers = [
        api.post(f"/internal/tasks/{uid}/heartbeat", json=stale),
        api.put(f"/internal/tasks/{uid}/output", params=stale, content=make_zip()),
        api.put(f"/internal/tasks/{uid}/logs", params=stale, content=b"stale log"),
        api.post(f"/internal/tasks/{uid}/finish", json={**stale, "status": "failed", "reason": "stale"}),
        api.post(f"/internal/tasks/{uid}/release", json={**stale, "reason": "stale", "infrastructure": True}),
    ]
    for answer in answers:
        assert answer.status_code == 409, answer.text
        assert set(answer.json()) == {"detail", "status"} and answer.json()["status"] == "running"
    assert _status(api, uid) == before
    assert not (settings.data_dir / "outputs" / f"{uid}.zip").exists()
    assert not (settings.data_dir / "logs" / f"{uid}.log").exists()
    assert _beat(api, uid, "new", 2) == (200, {"status": "running"})
    assert _finish(api, uid, "new", 2, exit_code=0) == 200


def test_an_output_uploaded_by_a_holder_that_lost_the_task_never_becomes_its_output(
    api: TestClient, settings: Settings
) -> None:
    add_model(api, "m")
    uid = submit(api, "m")
    _claim(api, uid, "old")
    stale = make_zip({"result.txt": "from the holder that lost the task"})
    assert api.put(f"/internal/tasks/{uid}/output", params=_holder("old", 1), content=stale).status_code == 200
    time.sleep(settings.lease_seconds + 0.5)
    assert _claim(api, uid, "new")[0] == 200
    fresh = make_zip({"result.txt": "from the holder that finished it"})
    assert api.put(f"/internal/tasks/{uid}/output", params=_holder("new", 2), content=fresh).status_code == 200
    assert _finish(api, uid, "new", 2, exit_code=0) == 200
    assert api.get(f"/api/tasks/{uid}").content == fresh
    assert _finish(api, uid, "old", 1, exit_code=0) == 409
    assert api.get(f"/api/tasks/{uid}").content == fresh
    assert sorted(p.name for p in (settings.data_dir / "outputs").iterdir()) == [f"{uid}.zip"]


def test_infrastructure_releases_back_off_give_the_attempt_back_and_are_bounded(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"infra_backoff_seconds": 1.0, "infra_backoff_max_seconds": 1.5, "max_infra_retries": 2}
    )
    with TestClient(create_app(settings), headers=AUTH) as api:
        add_model(api, "m")
        uid = submit(api, "m")
        reason = "GPU: could not select device driver"
        waits = []
        for retry in (1, 2):
            code, body = _claim(api, uid, f"c{retry}")
            assert code == 200 and body["task"]["attempt"] == 1
            released = _release(api, uid, f"c{retry}", reason=reason, infrastructure=True)
            assert released.status_code == 200 and released.json()["status"] == "pending"
            status = _status(api, uid)
            assert status["infra_retries"] == retry and status["attempt"] == 0
            not_before = datetime.fromisoformat(released.json()["not_before"])
            waits.append((not_before - datetime.now(UTC)).total_seconds())
            code, body = _claim(api, uid, "eager")
            assert code == 409 and body["status"] == "pending" and "backoff" in body["detail"]
            assert api.get("/healthz").json()["unpublished"] == 0  # backing off is not waiting for the broker
            time.sleep(max(waits[-1], 0) + 0.1)
        assert 0.5 < waits[0] <= 1.0 and 1.0 < waits[1] <= 1.5  # doubled, then capped
        _claim(api, uid, "c3")
        released = _release(api, uid, "c3", reason=reason, infrastructure=True)
        assert released.json()["status"] == "failed"
        failed = api.get(f"/api/tasks/{uid}")
        assert failed.status_code == 552
        assert failed.json()["reason"] == (
            f"gave up after 3 failures of the infrastructure (not the model's): {reason} (3x)"
        )


def test_leases_check_says_which_containers_still_have_a_live_holder(api: TestClient) -> None:
    add_model(api, "m")
    first, second = submit(api, "m"), submit(api, "m")
    _claim(api, first, "c1")
    _claim(api, second, "c1")
    asked = [(first, "c1", 1), (second, "c1", 2), (first, "c2", 1), ("B" * 32, "c1", 1), (second, "c1", 1)]
    body = {"leases": [{"uid": u, "consumer_id": c, "attempt": a} for u, c, a in asked]}
    assert api.post("/internal/leases/check", json=body).json() == {"live": [True, False, False, False, True]}
    _finish(api, first, "c1", 1)
    api.delete(f"/api/tasks/{second}")
    assert api.post("/internal/leases/check", json=body).json() == {"live": [False] * 5}


def test_consumer_heartbeats_show_in_healthz_models_and_tasks(api: TestClient, settings: Settings) -> None:
    health = api.get("/healthz").json()
    assert health["consumers"] == [] and health["queues"] == {GPU_QUEUE: 0, CPU_QUEUE: 0}
    assert health["warnings"] == []
    add_model(api, "cpu-model", use_gpu=False)
    add_model(api, "gpu-model", use_gpu=True)
    cpu_task, gpu_task = submit(api, "cpu-model"), submit(api, "gpu-model")
    assert sorted(api.get("/healthz").json()["warnings"]) == [
        f"queue {CPU_QUEUE} has no live consumer; 1 task(s) wait",
        f"queue {GPU_QUEUE} has no live consumer; 1 task(s) wait",
    ]
    cpu = {"name": "cpu1", "host": "h1", "queues": [CPU_QUEUE], "free_disk_bytes": 10**10}
    gpu = {"name": "gpu0", "host": "h1", "queues": [], "gpu_device": "0", "gpu_usable": False}
    gpu["gpu_reason"] = "could not select device driver"
    for instance, beat in (("cpu1-aaa", cpu), ("gpu0-bbb", gpu)):
        assert api.post(f"/internal/consumers/{instance}/heartbeat", json=beat).status_code == 200
    health = api.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["queues"] == {GPU_QUEUE: 0, CPU_QUEUE: 1}
    assert health["warnings"] == [
        f"queue {GPU_QUEUE} has no live consumer; 1 task(s) wait",
        "consumer gpu0 (gpu0-bbb): GPU unusable: could not select device driver",
    ]
    shown = {c["instance_id"]: c for c in health["consumers"]}
    assert shown["cpu1-aaa"]["live"] and shown["cpu1-aaa"]["free_disk_bytes"] == 10**10
    assert shown["gpu0-bbb"]["gpu_usable"] is False and shown["gpu0-bbb"]["queues"] == []

    sessions = api.app.state.sessions  # type: ignore[attr-defined]
    stale = settings.consumer_stale_seconds
    with sessions() as session:
        models = {
            m.human_readable_id: m
            for m in crud_consumers.models_out(session, crud.list_models(session), stale_seconds=stale)
        }
        assert (models["cpu-model"].consumers, models["cpu-model"].warning) == (1, None)
        assert models["gpu-model"].consumers == 0
        assert models["gpu-model"].warning == (
            f"no live consumer reads queue {GPU_QUEUE}: tasks for this model wait until a GPU consumer starts"
        )
        waiting = {
            uid: crud_consumers.task_status(session, crud.get_task(session, uid=uid), stale_seconds=stale)
            for uid in (cpu_task, gpu_task)
        }
        assert waiting[cpu_task].waiting_for is None and waiting[gpu_task].waiting_for == "a GPU consumer"
        session.execute(update(Consumer).values(last_seen=utcnow() - timedelta(seconds=stale + 1)))
        session.commit()
    health = api.get("/healthz").json()
    assert [c["live"] for c in health["consumers"]] == [False, False]
    assert health["queues"] == {GPU_QUEUE: 0, CPU_QUEUE: 0} and len(health["warnings"]) == 2  # no GPU warning now
    assert api.delete("/internal/consumers/cpu1-aaa").status_code == 200
    assert api.delete("/internal/consumers/cpu1-aaa").status_code == 404
    assert [c["instance_id"] for c in api.get("/healthz").json()["consumers"]] == ["gpu0-bbb"]
