"""Fault: the private API process is killed and started again while consumers run tasks.

What a user must see: a task whose consumer keeps running through the restart finishes at attempt 1 (the new
process counts every running lease from its own start, so the holder gets a full lease to check in), and a task
whose consumer is really gone is handed back only after that full lease, not at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.private_api_process import PrivateApiProcess
from tests.private_api.helpers import make_zip

LEASE = 4.0


@pytest.fixture
def private_api(db_url: str, rabbitmq_url: str, tmp_path: Path, purge_queues: None) -> Iterator[PrivateApiProcess]:
    process = PrivateApiProcess(
        data_dir=tmp_path / "data",
        database_url=db_url,
        rabbitmq_url=rabbitmq_url,
        lease_seconds=str(LEASE),
        outbox_interval_seconds="0.2",
        max_attempts="3",
    )
    try:
        yield process
    finally:
        process.kill()


def _submit(api: httpx.Client) -> str:
    answer = api.post("/api/tasks/", params={"human_readable_id": "m"}, files={"zip_file": ("in.zip", make_zip())})
    assert answer.status_code == 200, answer.text
    uid: str = json.loads(answer.content)
    return uid


def _status(api: httpx.Client, uid: str) -> dict[str, object]:
    body: dict[str, object] = api.get(f"/api/tasks/{uid}/status").json()
    return body


def test_running_leases_get_a_full_lease_from_the_restart(private_api: PrivateApiProcess) -> None:
    private_api.start()
    with private_api.client() as api:
        query: dict[str, str | bool] = {"container_tag": "busybox:stable", "human_readable_id": "m", "use_gpu": False}
        assert api.post("/api/models/", params=query).status_code == 200
        alive, gone = _submit(api), _submit(api)
        for uid, instance in ((alive, "cpu-alive01"), (gone, "cpu-gone0001")):
            claimed = api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": instance, "consumer_name": "cpu"})
            assert claimed.status_code == 200, claimed.text

    private_api.kill()  # a crash in the middle of both tasks
    time.sleep(LEASE + 1)  # longer than a lease: by their last heartbeats, both leases have expired
    started = private_api.start()

    with private_api.client() as api:
        asked = {"leases": [{"uid": alive, "consumer_id": "cpu-alive01", "attempt": 1}]}
        assert api.post("/internal/leases/check", json=asked).json() == {"live": [True]}
        time.sleep(max(started + LEASE * 0.6 - time.monotonic(), 0))
        assert _status(api, gone)["status"] == "running"  # not reaped before a full lease from the start
        # The consumer that kept running checks in, stores its result and finishes: attempt 1, never run again.
        beat = api.post(f"/internal/tasks/{alive}/heartbeat", json={"consumer_id": "cpu-alive01", "attempt": 1})
        assert beat.json() == {"status": "running"}
        output = make_zip({"result.txt": "done"})
        holder: dict[str, str | int] = {"consumer_id": "cpu-alive01", "attempt": 1}
        assert api.put(f"/internal/tasks/{alive}/output", params=holder, content=output).status_code == 200
        finish = {**holder, "status": "finished", "exit_code": 0}
        assert api.post(f"/internal/tasks/{alive}/finish", json=finish).status_code == 200
        assert api.get(f"/api/tasks/{alive}").content == output
        assert _status(api, alive)["attempt"] == 1

        # The consumer that is really gone: its task goes back to the queue once the full lease has run out.
        deadline = time.monotonic() + LEASE + 10
        while _status(api, gone)["status"] == "running":
            assert time.monotonic() < deadline, "the lost consumer's task was never handed back"
            time.sleep(0.2)
        assert time.monotonic() - started >= LEASE - 0.5  # (its lease clock starts just before /healthz answers)
        status = _status(api, gone)
        assert status["status"] == "pending" and status["attempt"] == 1
        taken = api.post(f"/internal/tasks/{gone}/claim", json={"consumer_id": "cpu-new00001"})
        assert taken.status_code == 200 and taken.json()["task"]["attempt"] == 2
