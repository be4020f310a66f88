"""Prometheus metrics of one consumer instance, served over HTTP on METRICS_PORT (internal network only).

The worker reports each task's result (`task_done`): its phase durations by model, its outcome and, for a failure,
the reason class. `MeteredApiClient` counts the bytes of inputs and model zips downloaded and of outputs and logs
uploaded. The free space of WORK_DIR is read at each scrape.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from common.failures import INFRASTRUCTURE, classify
from job_consumer.private_api import PrivateApiClient
from job_consumer.schemas import Claim
from job_consumer.task_runner import TaskResult

__all__ = ["ConsumerMetrics", "MeteredApiClient", "serve"]

log = logging.getLogger(__name__)

# TaskResult.phases names (older and newer) -> the phase a user sees in the status.
PHASES = {
    "provision": "preparing",
    "preparing": "preparing",
    "run": "running",
    "running": "running",
    "collect": "uploading",
    "uploading": "uploading",
}
# Tasks run from seconds to many hours.
BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 57600, 86400)


def _free_bytes(path: Path) -> float:
    try:
        return float(shutil.disk_usage(path).free)
    except OSError:
        return float("nan")


def _queued_seconds(created_at: datetime | None, started_at: datetime | None) -> float | None:
    if created_at is None or started_at is None:
        return None
    return max((started_at - created_at).total_seconds(), 0.0)


class ConsumerMetrics:
    """The consumer's metrics, in a registry of their own."""

    def __init__(
        self, work_dir: Path | None = None, *, consumer: str = "", instance_id: str = "", gpu: str = ""
    ) -> None:
        self.registry = CollectorRegistry()
        info = Gauge(
            "inference_consumer_info",
            "Always 1: which consumer this is (its CONSUMER_ID, instance id and GPU_DEVICE).",
            ["consumer", "instance_id", "gpu_device"],
            registry=self.registry,
        )
        info.labels(consumer=consumer, instance_id=instance_id, gpu_device=gpu).set(1)
        self.phase_seconds = Histogram(
            "inference_consumer_task_phase_seconds",
            "Seconds a task spent per phase (queued: from submission to this consumer's claim), by model.",
            ["model", "phase"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.tasks = Counter(
            "inference_consumer_tasks",
            "Tasks this consumer handled, by model and outcome (finished, failed, released, lost, unreachable).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "inference_consumer_task_failures",
            "Failed attempts by model and reason class (model_exit, timeout, out_of_memory, infrastructure).",
            ["model", "reason_class"],
            registry=self.registry,
        )
        self.downloaded = Counter(
            "inference_consumer_downloaded_bytes",
            "Bytes downloaded (input, model zips).",
            ["kind"],
            registry=self.registry,
        )
        self.uploaded = Counter(
            "inference_consumer_uploaded_bytes", "Bytes uploaded (output, logs).", ["kind"], registry=self.registry
        )
        for kind in ("input", "model"):
            self.downloaded.labels(kind=kind)
        for kind in ("output", "logs"):
            self.uploaded.labels(kind=kind)
        if work_dir is not None:
            free = Gauge("inference_consumer_work_dir_free_bytes", "Free bytes in WORK_DIR.", registry=self.registry)
            free.set_function(lambda: _free_bytes(work_dir))

    def task_done(self, claim: Claim, result: TaskResult) -> None:
        """Count one task's result (never raises: metrics must not disturb the task)."""
        try:
            self._count(claim, result)
        except Exception:
            log.exception("metrics: counting the result of task %s failed", result.uid)

    def _count(self, claim: Claim, result: TaskResult) -> None:
        model = claim.model.human_readable_id
        self.tasks.labels(model=model, outcome=result.outcome or "unknown").inc()
        queued = _queued_seconds(claim.task.created_at, claim.task.started_at)
        if queued is not None:
            self.phase_seconds.labels(model=model, phase="queued").observe(queued)
        for name, seconds in result.phases.items():
            if name in PHASES:
                self.phase_seconds.labels(model=model, phase=PHASES[name]).observe(seconds)
        if result.outcome == "failed":
            self.failures.labels(model=model, reason_class=classify(result.reason)).inc()
        elif result.infrastructure or result.outcome == "unreachable":
            self.failures.labels(model=model, reason_class=INFRASTRUCTURE).inc()


class MeteredApiClient(PrivateApiClient):
    """The private API client, counting the bytes of what it downloads and uploads."""

    def __init__(self, *args: Any, metrics: ConsumerMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    def download_input(self, uid: str, dest: Path) -> str:
        sha256 = super().download_input(uid, dest)
        self.metrics.downloaded.labels(kind="input").inc(_size(dest))
        return sha256

    def download_model_zip(self, hid: str, dest: Path, **kwargs: Any) -> None:
        super().download_model_zip(hid, dest, **kwargs)
        self.metrics.downloaded.labels(kind="model").inc(_size(dest))

    def upload_output(self, uid: str, attempt: int, path: Path) -> str:
        sha256 = super().upload_output(uid, attempt, path)
        self.metrics.uploaded.labels(kind="output").inc(_size(path))
        return sha256

    def upload_logs(self, uid: str, attempt: int, text: bytes) -> None:
        super().upload_logs(uid, attempt, text)
        self.metrics.uploaded.labels(kind="logs").inc(len(text))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def serve(metrics: ConsumerMetrics, port: int, host: str = "0.0.0.0") -> WSGIServer | None:
    """Serve the metrics on host:port in a thread; None (logged) when the port cannot be bound."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        log.warning(
            "metrics: cannot listen on %s:%d (%s); this consumer runs without its metrics server", host, port, exc
        )
        return None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
