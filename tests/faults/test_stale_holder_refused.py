"""Fault: a consumer loses its lease mid-run (a long pause, a cut network) while another takes the task over.

What a user must see, on SQLite and on PostgreSQL: the result is the new holder's; the stale holder's heartbeat,
output, logs, finish and release are refused with 409 and change nothing, even an output upload that was already
streaming when the lease was taken over. Concurrent claims of one task hand it to exactly one consumer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx

from private_api.config import Settings
from tests.private_api.conftest import AUTH, LiveServer
from tests.private_api.helpers import make_zip


def _client(live: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers=AUTH, timeout=30)


def _new_task(api: httpx.Client) -> str:
    query: dict[str, str | bool] = {"container_tag": "busybox:stable", "human_readable_id": "m", "use_gpu": False}
    if api.get("/api/models/m").status_code != 200:
        assert api.post("/api/models/", params=query).status_code == 200
    answer = api.post("/api/tasks/", params={"human_readable_id": "m"}, files={"zip_file": ("in.zip", make_zip())})
    assert answer.status_code == 200, answer.text
    uid: str = json.loads(answer.content)
    return uid


def _claim(api: httpx.Client, uid: str, instance: str) -> httpx.Response:
    return api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": instance, "consumer_name": "cpu"})


def test_stale_holder_is_refused_even_mid_upload(live: LiveServer, settings: Settings) -> None:
    with _client(live) as api:
        uid = _new_task(api)
        assert _claim(api, uid, "cpu-stale0001").status_code == 200
        stale_output = make_zip({"result.txt": "from the stale holder"})
        upload_started = threading.Event()

        def slowly() -> Iterator[bytes]:
            for start in range(0, len(stale_output), 16):
                upload_started.set()
                time.sleep((settings.lease_seconds + 1.5) / (len(stale_output) / 16))
                yield stale_output[start : start + 16]

        def stale_upload() -> httpx.Response:
            with _client(live) as other:
                params: dict[str, str | int] = {"consumer_id": "cpu-stale0001", "attempt": 1}
                return other.put(f"/internal/tasks/{uid}/output", params=params, content=slowly())

        with ThreadPoolExecutor(1) as pool:
            uploading = pool.submit(stale_upload)
            assert upload_started.wait(10)
            time.sleep(settings.lease_seconds + 0.3)  # the stale holder sent no heartbeat: its lease expires
            taken = _claim(api, uid, "cpu-fresh0001")
            assert taken.status_code == 200 and taken.json()["task"]["attempt"] == 2
            refused = uploading.result(timeout=60)
        assert refused.status_code == 409 and refused.json()["status"] == "running"
        assert api.get(f"/api/tasks/{uid}").status_code == 551  # nothing stored

        stale: dict[str, str | int] = {"consumer_id": "cpu-stale0001", "attempt": 1}
        before = api.get(f"/api/tasks/{uid}/status").json()
        for answer in (
            api.post(f"/internal/tasks/{uid}/heartbeat", json=stale),
            api.put(f"/internal/tasks/{uid}/logs", params=stale, content=b"stale"),
            api.post(f"/internal/tasks/{uid}/finish", json={**stale, "status": "finished", "exit_code": 0}),
            api.post(f"/internal/tasks/{uid}/release", json={**stale, "reason": "x", "infrastructure": True}),
        ):
            assert answer.status_code == 409 and set(answer.json()) == {"detail", "status"}
        assert api.get(f"/api/tasks/{uid}/status").json() == before

        fresh: dict[str, str | int] = {"consumer_id": "cpu-fresh0001", "attempt": 2}
        output = make_zip({"result.txt": "from the new holder"})
        assert api.put(f"/internal/tasks/{uid}/output", params=fresh, content=output).status_code == 200
        assert api.post(f"/internal/tasks/{uid}/finish", json={**fresh, "status": "finished"}).status_code == 200
        assert api.get(f"/api/tasks/{uid}").content == output
        status = api.get(f"/api/tasks/{uid}/status").json()
        assert [(e["consumer"], e["status"]) for e in status["history"]] == [
            ("cpu-stale0001", "lost"),
            ("cpu-fresh0001", "finished"),
        ]


def test_concurrent_claims_hand_a_task_to_exactly_one_consumer(live: LiveServer) -> None:
    # Eight consumers claim the same message at once. Fair order may hand a claim another pending task of the queue
    # (tasks of one owner here: the oldest), but never one task to two consumers, and never a second attempt.
    with _client(live) as api:
        uids = [_new_task(api) for _ in range(5)]
    handed: list[str] = []
    for round_, uid in enumerate(uids):
        barrier = threading.Barrier(8)

        def claim(instance: str, uid: str = uid, barrier: threading.Barrier = barrier) -> tuple[int, str | None]:
            with _client(live) as own:
                barrier.wait()
                answer = _claim(own, uid, instance)
                return answer.status_code, answer.json()["task"]["uid"] if answer.status_code == 200 else None

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(claim, [f"cpu-race{round_}{n:03d}" for n in range(8)]))
        assert {code for code, _ in answers} <= {200, 409}
        handed += [task for code, task in answers if code == 200 and task is not None]
    assert sorted(handed) == sorted(set(handed)), "a task was handed to two consumers"
    assert set(handed) <= set(uids)
    with _client(live) as api:
        for uid in uids:
            status = api.get(f"/api/tasks/{uid}/status").json()
            assert status["attempt"] == (1 if uid in handed else 0), status
