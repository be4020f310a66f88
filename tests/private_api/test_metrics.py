"""GET /metrics of the private API: what the collector reads from the database, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from common.failures import INFRASTRUCTURE, MODEL_EXIT, OUT_OF_MEMORY, TIMEOUT, classify
from common.messages import CPU_QUEUE, GPU_QUEUE
from job_consumer.containers import RunResult
from job_consumer.schemas import ModelInfo
from job_consumer.task_runner import failure_reason
from private_api import crud_tasks, leases
from private_api.metrics import DatabaseCollector, _time_limit
from private_api.orm import Task, utcnow
from tests.private_api.helpers import add_model, make_zip, submit

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(api: TestClient) -> Samples:
    """GET /metrics without any header, parsed: {(sample name, sorted labels): value}."""
    response = api.get("/metrics", headers={"X-Internal-Token": ""})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (KeyError when absent)."""
    return samples[(name, tuple(sorted(labels.items())))]


def _claim(api: TestClient, uid: str, consumer: str = "c-1") -> int:
    response = api.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": consumer, "consumer_name": consumer})
    assert response.status_code == 200, response.text
    return int(response.json()["task"]["attempt"])


def _fail(api: TestClient, uid: str, reason: str | None, exit_code: int | None) -> None:
    attempt = _claim(api, uid)
    body = {"consumer_id": "c-1", "attempt": attempt, "status": "failed", "reason": reason, "exit_code": exit_code}
    assert api.post(f"/internal/tasks/{uid}/finish", json=body).status_code == 200


def _stale_running(sessions: sessionmaker[Session], uid: str, attempt: int) -> None:
    """Make the task run at `attempt` under a lease that expired long ago."""
    with sessions() as session:
        session.execute(
            sa.update(Task)
            .where(Task.uid == uid)
            .values(status="running", attempt=attempt, consumer_id="gone", heartbeat_at=utcnow() - timedelta(hours=1))
        )
        session.commit()


def test_metrics_from_the_database(api: TestClient) -> None:
    """Tasks by state and model, failures by reason class (the texts consumers and leases really write), queue
    depth, outbox backlog, live consumers per queue and their free disk; counters of submissions and bytes."""
    add_model(api, "cpu-model")
    add_model(api, "gpu-model", use_gpu=True)
    before = scrape(api)
    data = make_zip()
    uids = [submit(api, "cpu-model", data) for _ in range(8)]
    submit(api, "gpu-model", data)
    sessions: sessionmaker[Session] = api.app.state.sessions  # type: ignore[attr-defined]

    model = ModelInfo(id=1, human_readable_id="cpu-model", container_tag="x", timeout=5, mem_limit="64m")
    _fail(api, uids[0], failure_reason(model, RunResult("c", exit_code=None, timed_out=True)), None)
    _fail(api, uids[1], failure_reason(model, RunResult("c", exit_code=137, oom_killed=True)), 137)
    _fail(api, uids[2], failure_reason(model, RunResult("c", exit_code=3, log_tail=b"boom")), 3)
    _fail(api, uids[3], "the output is larger than the model's max_output_size (1k); nothing was stored", None)
    # The private API's own ends: out of infrastructure retries, out of attempts at a claim, and in the reaper.
    attempt = _claim(api, uids[4])
    with sessions() as session:
        crud_tasks.release_task(
            session,
            uid=uids[4],
            consumer_id="c-1",
            attempt=attempt,
            reason="GPU unusable",
            infrastructure=True,
            policy=leases.InfraPolicy(max_retries=0),
        )
    rule = leases.LeaseRule(seconds=1, since=utcnow() - timedelta(hours=2))
    _stale_running(sessions, uids[5], attempt=2)
    with sessions() as session, pytest.raises(Exception, match="no attempts left"):
        crud_tasks.claim_task(session, uid=uids[5], consumer_id="c-2", consumer_name="c-2", rule=rule, max_attempts=2)
    _stale_running(sessions, uids[6], attempt=2)
    with sessions() as session:
        assert leases.reap_expired(session, rule=rule, max_attempts=2) == 1
    finished = uids[7]
    attempt = _claim(api, finished)
    body = {"consumer_id": "c-1", "attempt": attempt, "status": "finished", "exit_code": 0}
    assert api.put(f"/internal/tasks/{finished}/output", params=body, content=data).status_code == 200
    assert api.post(f"/internal/tasks/{finished}/finish", json=body).status_code == 200
    assert api.get(f"/api/tasks/{finished}").status_code == 200
    cancelled = submit(api, "cpu-model", data)
    assert api.delete(f"/api/tasks/{cancelled}").status_code == 200
    pending = submit(api, "cpu-model", data)
    heartbeat = {"name": "box-gpu0", "host": "box", "queues": [GPU_QUEUE, CPU_QUEUE], "free_disk_bytes": 5 * 10**9}
    assert api.post("/internal/consumers/i-1/heartbeat", json=heartbeat).status_code == 200
    fuller = {**heartbeat, "free_disk_bytes": 10**9}  # the same name and host: the lower value counts
    assert api.post("/internal/consumers/i-2/heartbeat", json=fuller).status_code == 200
    api.app.state.publisher.stop()  # type: ignore[attr-defined]
    with sessions() as session:  # a pending task the outbox has not published (it is stopped)
        session.execute(sa.update(Task).where(Task.uid == pending).values(published_at=None))
        session.commit()

    after = scrape(api)
    assert value(after, "inference_metrics_database_up") == 1
    states = {s: value(after, "inference_tasks", state=s, model="cpu-model") for s in ("pending", "finished")}
    assert states == {"pending": 1, "finished": 1}
    assert value(after, "inference_tasks", state="failed", model="cpu-model") == 7
    assert value(after, "inference_tasks", state="cancelled", model="cpu-model") == 1
    assert value(after, "inference_tasks", state="running", model="cpu-model") == 0
    assert value(after, "inference_tasks", state="pending", model="gpu-model") == 1
    failures = {
        c: value(after, "inference_task_failures_total", model="cpu-model", reason_class=c)
        for c in (TIMEOUT, OUT_OF_MEMORY, MODEL_EXIT, INFRASTRUCTURE)
    }
    assert failures == {TIMEOUT: 1, OUT_OF_MEMORY: 1, MODEL_EXIT: 2, INFRASTRUCTURE: 3}
    assert value(after, "inference_queue_depth", queue=CPU_QUEUE) == 1
    assert value(after, "inference_queue_depth", queue=GPU_QUEUE) == 1
    assert value(after, "inference_outbox_backlog") == 1
    assert value(after, "inference_consumers", queue=GPU_QUEUE) == 2
    assert value(after, "inference_consumer_free_disk_bytes", consumer="box-gpu0", host="box") == 10**9

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - before.get((name, tuple(sorted(labels.items()))), 0.0)

    assert grew("inference_task_submissions_total", model="cpu-model") == 10
    assert grew("inference_received_bytes_total", kind="input") == 11 * len(data)
    assert grew("inference_received_bytes_total", kind="output") == len(data)
    assert grew("inference_sent_bytes_total", kind="output") == len(data)


def test_gauges_without_tasks_or_consumers(api: TestClient) -> None:
    """An empty service still answers every queue's depth and consumer count (0), so alerts can compare them."""
    samples = scrape(api)
    for queue in (GPU_QUEUE, CPU_QUEUE):
        assert value(samples, "inference_queue_depth", queue=queue) == 0
        assert value(samples, "inference_consumers", queue=queue) == 0
    assert value(samples, "inference_outbox_backlog") == 0


def test_a_database_that_does_not_answer_in_time(db_url: str) -> None:
    """The time limit aborts a slow query; the collector then reports database_up 0 instead of hanging."""
    engine = sa.create_engine(db_url)
    sessions = sessionmaker(engine)
    slow = (
        "SELECT pg_sleep(5)"
        if engine.dialect.name == "postgresql"
        else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    with sessions() as session, pytest.raises(sa.exc.OperationalError), _time_limit(session, 0.2):
        session.execute(sa.text(slow))
    families = {f.name: f for f in DatabaseCollector(sessions, stale_seconds=5, timeout_seconds=1).collect()}
    assert families["inference_metrics_database_up"].samples[0].value == 0  # no tables: the queries fail
    engine.dispose()


def test_reason_classes() -> None:
    """The consumer's classifier agrees with the SQL one on the texts that matter."""
    assert classify("timed out after 5 s") == TIMEOUT
    assert classify("killed: out of memory (limit 64m)") == OUT_OF_MEMORY
    assert classify("gave up after 3 attempts; last problem: x") == INFRASTRUCTURE
    assert classify("exited with code 3") == MODEL_EXIT
    assert classify(None) == MODEL_EXIT
