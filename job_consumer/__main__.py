"""`python -m job_consumer`: run one consumer (one per GPU) until SIGTERM."""

from __future__ import annotations

import logging
import sys
import uuid

import docker

from common.settings import configure_logging, settings_or_exit
from job_consumer.broker import Broker, queues_for
from job_consumer.config import ConsumerSettings, load_settings
from job_consumer.containers import Engine
from job_consumer.housekeeping import Housekeeping
from job_consumer.metrics import ConsumerMetrics, MeteredApiClient, serve
from job_consumer.sandbox import Sandbox, scope_of
from job_consumer.task_runner import TaskRunner
from job_consumer.worker import Worker
from job_consumer.workspace import Workspace

log = logging.getLogger("job_consumer")


def new_instance_id(name: str) -> str:
    """A unique id for this run of the consumer: its readable name plus a random suffix."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


def build_worker(settings: ConsumerSettings, instance_id: str | None = None) -> Worker:
    """Wire the worker's collaborators from the settings."""
    instance_id = instance_id or new_instance_id(settings.consumer_id)
    client = docker.DockerClient(base_url=settings.docker_host) if settings.docker_host else docker.from_env()
    engine = Engine(
        client,
        pull_missing_images=settings.pull_missing_images,
        stop_timeout=settings.stop_timeout_seconds,
        max_log_bytes=settings.max_log_bytes,
    )
    metrics = ConsumerMetrics(
        settings.work_dir, consumer=settings.consumer_id, instance_id=instance_id, gpu=settings.gpu_device or ""
    )
    api = MeteredApiClient(
        settings.private_api_url,
        token=settings.internal_token,
        instance_id=instance_id,
        consumer_name=settings.consumer_id,
        timeout=settings.http_timeout_seconds,
        retry_seconds=settings.private_api_retry_seconds,
        metrics=metrics,
    )
    scope = scope_of(settings.private_api_url, settings.deployment_name)
    workspace = Workspace(
        settings.work_dir,
        instance_id=instance_id,
        scope=scope,
        zip_limits=settings.zip_limits(),
        min_free_bytes=settings.min_free_disk_bytes,
        fill_timeout=settings.model_fill_timeout_seconds,
    )
    queues = queues_for(has_gpu=settings.gpu_device is not None)
    housekeeping = Housekeeping(
        api=api,
        engine=engine,
        workspace=workspace,
        queues=queues,
        scope=scope,
        gpu_device=settings.gpu_device,
        gpu_probe_image=settings.gpu_probe_image,
        heartbeat_seconds=settings.consumer_heartbeat_seconds,
        reprobe_seconds=settings.gpu_reprobe_seconds,
        reap_seconds=settings.reap_seconds,
    )
    runner = TaskRunner(
        api=api,
        engine=engine,
        workspace=workspace,
        sandbox=Sandbox(
            gpu_device=settings.gpu_device,
            pids_limit=settings.pids_limit,
            max_log_bytes=settings.max_log_bytes,
            tmp_size=settings.tmp_size,
            progress_file=settings.progress_file,
        ),
        scope=scope,
        heartbeat_seconds=settings.heartbeat_seconds,
        on_gpu_error=housekeeping.gpu_failed,
        gpu_info=lambda: housekeeping.gpu_info,
    )
    return Worker(
        broker=Broker(settings.rabbitmq_url, housekeeping.active_queues()),
        runner=runner,
        housekeeping=housekeeping,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        requeue_delay_seconds=settings.requeue_delay_seconds,
        metrics=metrics,
    )


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT; `--burst` drains the queues and exits."""
    args = sys.argv[1:] if argv is None else argv
    burst = "--burst" in args
    settings = settings_or_exit("job consumer", load_settings)
    configure_logging(settings.log_level)
    worker = build_worker(settings)
    worker.install_signal_handlers()
    metrics_server = serve(worker.metrics, settings.metrics_port) if settings.metrics_port else None
    log.info(
        "consumer %s (instance %s) starting (GPU %s, private API %s, WORK_DIR %s)",
        settings.consumer_id,
        worker.api.instance_id,
        settings.gpu_device or "none: CPU models only",
        settings.private_api_url,
        settings.work_dir,
    )
    try:
        handled = worker.run(burst=burst)
    finally:
        worker.api.close()
        if metrics_server is not None:
            metrics_server.shutdown()
    log.info("consumer %s stopped after %d messages", worker.api.instance_id, handled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
