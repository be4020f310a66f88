"""`python -m job_consumer`: run one consumer (one per GPU) until SIGTERM."""

from __future__ import annotations

import logging
import sys

import docker

from common.settings import configure_logging, settings_or_exit
from job_consumer.broker import Broker, queues_for
from job_consumer.config import ConsumerSettings, load_settings
from job_consumer.docker_executor import DockerExecutor
from job_consumer.private_api import PrivateApiClient
from job_consumer.worker import Worker

log = logging.getLogger("job_consumer")


def build_worker(settings: ConsumerSettings) -> Worker:
    """Wire the worker's collaborators from the settings."""
    client = docker.DockerClient(base_url=settings.docker_host) if settings.docker_host else docker.from_env()
    executor = DockerExecutor(
        client,
        consumer_id=settings.consumer_id,
        gpu_device=settings.gpu_device,
        work_dir=settings.work_dir,
        pids_limit=settings.pids_limit,
        max_log_bytes=settings.max_log_bytes,
        pull_missing_images=settings.pull_missing_images,
        stop_timeout=settings.stop_timeout_seconds,
        model_fill_timeout=settings.model_fill_timeout_seconds,
        bind_mounts={"auto": None, "on": True, "off": False}[settings.bind_work_dir],
    )
    api = PrivateApiClient(
        settings.private_api_url,
        token=settings.internal_token,
        consumer_id=settings.consumer_id,
        timeout=settings.http_timeout_seconds,
    )
    broker = Broker(settings.rabbitmq_url, queues_for(has_gpu=settings.gpu_device is not None))
    return Worker(
        broker=broker,
        api=api,
        executor=executor,
        work_dir=settings.work_dir,
        heartbeat_seconds=settings.heartbeat_seconds,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        requeue_delay_seconds=settings.requeue_delay_seconds,
    )


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT; `--burst` drains the queues and exits."""
    args = sys.argv[1:] if argv is None else argv
    burst = "--burst" in args
    settings = settings_or_exit("job consumer", load_settings)
    configure_logging(settings.log_level)
    worker = build_worker(settings)
    worker.install_signal_handlers()
    log.info(
        "consumer %s starting (GPU %s, private API %s)",
        settings.consumer_id,
        settings.gpu_device or "none: CPU models only",
        settings.private_api_url,
    )
    try:
        handled = worker.run(burst=burst)
    finally:
        worker.api.close()
    log.info("consumer %s stopped after %d messages", settings.consumer_id, handled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
