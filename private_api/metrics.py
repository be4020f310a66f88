"""Prometheus metrics of the private API: counters kept in this process, gauges read from the database at scrape.

The counters (submissions, bytes in and out) count what this process did since it started; the routes call the
`count_*` hooks. Everything else is read from the database when Prometheus scrapes, by `DatabaseCollector`: one
GROUP BY over the tasks (tasks by state and model, failures by reason class, queue depth), the outbox count and the
consumers' heartbeats, under a short time limit so a slow database makes a scrape report
`inference_metrics_database_up 0` instead of hanging. Values read from the database are the same on every private
API instance (aggregate them with max, not sum).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, null, select
from sqlalchemy.orm import Session, sessionmaker

from common.failures import MODEL_EXIT, REASON_PREFIXES
from common.messages import CPU_QUEUE, GPU_QUEUE, queue_for
from private_api import crud, crud_consumers
from private_api.orm import Task

__all__ = ["DatabaseCollector", "count_received", "count_sent", "count_submission", "make_registry"]

log = logging.getLogger(__name__)

STATES = ("pending", "running", "finished", "failed", "cancelled")
QUEUES = (GPU_QUEUE, CPU_QUEUE)
KINDS_RECEIVED = ("input", "model", "output")
KINDS_SENT = ("output", "input", "model")
DEFAULT_TIMEOUT_SECONDS = 2.0

# Not in the default registry: every app gets a registry of its own (make_registry) that holds these too.
SUBMISSIONS = Counter(
    "inference_task_submissions",
    "Tasks accepted (stored and queued) by this process, by model.",
    ["model"],
    registry=None,
)
RECEIVED = Counter(
    "inference_received_bytes",
    "Bytes of uploads read by this process: input zips, model zips, output zips from consumers.",
    ["kind"],
    registry=None,
)
SENT = Counter(
    "inference_sent_bytes",
    "Bytes of files answered by this process: outputs to users, inputs and model zips to consumers.",
    ["kind"],
    registry=None,
)
for _kind in KINDS_RECEIVED:
    RECEIVED.labels(kind=_kind)
for _kind in KINDS_SENT:
    SENT.labels(kind=_kind)


def count_submission(model: str) -> None:
    """A task for model was accepted."""
    SUBMISSIONS.labels(model=model).inc()


def count_received(kind: str, size: int) -> None:
    """An upload of size bytes was read (kind: input, model or output)."""
    RECEIVED.labels(kind=kind).inc(max(size, 0))


def count_sent(kind: str, path: Path) -> None:
    """The file at path is being answered (kind: output, input or model); a file gone meanwhile counts nothing."""
    try:
        size = path.stat().st_size
    except OSError:
        return
    SENT.labels(kind=kind).inc(size)


@contextmanager
def _time_limit(session: Session, seconds: float) -> Iterator[None]:
    """Abort the session's queries that run past `seconds` (PostgreSQL: statement_timeout; SQLite: a progress
    handler); the limit ends with the session's transaction or this block."""
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.exec_driver_sql(f"SET LOCAL statement_timeout = {max(int(seconds * 1000), 1)}")
        yield
    elif dialect == "sqlite":
        raw = connection.connection.dbapi_connection
        deadline = time.monotonic() + seconds
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)  # type: ignore[union-attr]
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)  # type: ignore[union-attr]
    else:
        yield


def _task_counts(session: Session) -> list[tuple[str, str, bool, bool, str | None, int]]:
    """(status, model, use_gpu, deleted, reason class of a failed task, count), in one GROUP BY."""
    error = func.coalesce(Task.error, "")
    reason_class = case(
        (Task.status != "failed", null()),
        *((error.like(f"{prefix}%"), name) for prefix, name in REASON_PREFIXES),
        else_=MODEL_EXIT,
    ).label("reason_class")
    columns = (Task.status, Task.model_hid, Task.use_gpu, Task.deleted)
    query = select(*columns, reason_class, func.count()).group_by(*columns, reason_class)
    return [(str(s), str(m), bool(g), bool(d), c, int(n)) for s, m, g, d, c, n in session.execute(query)]


class DatabaseCollector(Collector):
    """The gauges (and the failure counter) that the database knows, read at each scrape."""

    def __init__(
        self, sessions: sessionmaker[Session], *, stale_seconds: float, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self.sessions = sessions
        self.stale_seconds = stale_seconds
        self.timeout_seconds = timeout_seconds

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Every metric the database knows, plus whether it answered in time."""
        started = time.monotonic()
        try:
            with self.sessions() as session, _time_limit(session, self.timeout_seconds):
                families = self._families(session)
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: the database did not answer within %.1f s: %s", self.timeout_seconds, exc)
            families = []
        yield from families
        yield GaugeMetricFamily(
            "inference_metrics_database_up",
            "1 when this scrape's database queries answered within the time limit; 0: the gauges are absent.",
            value=1 if families else 0,
        )
        yield GaugeMetricFamily(
            "inference_metrics_database_seconds",
            "How long this scrape's database queries took.",
            value=time.monotonic() - started,
        )

    def _families(self, session: Session) -> list[GaugeMetricFamily | CounterMetricFamily]:
        tasks: Tally[tuple[str, str]] = Tally()
        failures: Tally[tuple[str, str]] = Tally()
        depth: Tally[str] = Tally(dict.fromkeys(QUEUES, 0))
        for status, model, use_gpu, deleted, reason_class, n in _task_counts(session):
            tasks[(status, model)] += n
            if status == "failed":
                failures[(model, reason_class or MODEL_EXIT)] += n
            if status == "pending" and not deleted:
                depth[queue_for(use_gpu=use_gpu)] += n
        unpublished = crud.count_unpublished(session)
        instances = crud_consumers.consumers(session, stale_seconds=self.stale_seconds)

        by_state = GaugeMetricFamily("inference_tasks", "Tasks by state and model.", labels=["state", "model"])
        for model in sorted({model for _state, model in tasks}):
            for state in STATES:
                by_state.add_metric([state, model], tasks[(state, model)])
        failed = CounterMetricFamily(
            "inference_task_failures",
            "Failed tasks by model and reason class (model_exit, timeout, out_of_memory, infrastructure).",
            labels=["model", "reason_class"],
        )
        for (model, reason_class), n in sorted(failures.items()):
            failed.add_metric([model, reason_class], n)
        queue_depth = GaugeMetricFamily("inference_queue_depth", "Pending tasks per queue.", labels=["queue"])
        for queue, n in sorted(depth.items()):
            queue_depth.add_metric([queue], n)
        backlog = GaugeMetricFamily(
            "inference_outbox_backlog",
            "Pending tasks not yet published to RabbitMQ (the broker is away).",
            value=unpublished,
        )

        live: Tally[str] = Tally(dict.fromkeys(QUEUES, 0))
        free: dict[tuple[str, str], int] = {}
        for instance in instances:
            if not instance.live:
                continue
            live.update(instance.queues)
            if instance.free_disk_bytes is not None:
                key = (instance.name, instance.host)
                free[key] = min(free.get(key, instance.free_disk_bytes), instance.free_disk_bytes)
        consumers = GaugeMetricFamily(
            "inference_consumers", "Live consumer instances (recent heartbeat) per queue they read.", labels=["queue"]
        )
        for queue, n in sorted(live.items()):
            consumers.add_metric([queue], n)
        disk = GaugeMetricFamily(
            "inference_consumer_free_disk_bytes",
            "Free bytes in a live consumer's WORK_DIR, from its heartbeat.",
            labels=["consumer", "host"],
        )
        for (name, host), n in sorted(free.items()):
            disk.add_metric([name, host], n)
        return [by_state, failed, queue_depth, backlog, consumers, disk]


def _free_bytes(path: Path) -> float:
    try:
        return float(shutil.disk_usage(path).free)
    except OSError:
        return float("nan")


def make_registry(
    sessions: sessionmaker[Session],
    *,
    stale_seconds: float,
    data_dir: Path | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> CollectorRegistry:
    """A registry with this process's counters, a DatabaseCollector on sessions and DATA_DIR's free space."""
    registry = CollectorRegistry()
    for counter in (SUBMISSIONS, RECEIVED, SENT):
        registry.register(counter)
    registry.register(DatabaseCollector(sessions, stale_seconds=stale_seconds, timeout_seconds=timeout_seconds))
    if data_dir is not None:
        free = Gauge("inference_data_dir_free_bytes", "Free bytes under DATA_DIR (zips, SQLite).", registry=registry)
        free.set_function(lambda: _free_bytes(data_dir))
    return registry
