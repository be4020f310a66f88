"""Runs the consumer benchmarks: RabbitMQ, the private API and consumers up, measure, tear down, report."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import docker

from bench.consumer_tasks.measurements import measure_latency, measure_makespan, measure_memory
from bench.consumer_tasks.options import parse_options
from bench.consumer_tasks.report import report
from bench.consumer_tasks.stack import Api, private_api_server, start_consumer, start_rabbitmq, wait_for_consumers
from tests.images.build import build_model_images


def run(argv: list[str] | None = None) -> int:
    """Run the three consumer benchmarks and print their tables."""
    options = parse_options(argv)
    log_level = "DEBUG" if options.step_times else "WARNING"
    client = docker.from_env(timeout=300)
    images = build_model_images(client)
    amqp_url, rabbit = start_rabbitmq(client)
    work = Path(tempfile.mkdtemp(prefix="bench-consumer-"))
    results: dict[str, Any] = {}
    server = private_api_server(work, amqp_url)
    consumers: list[subprocess.Popen[bytes]] = []
    try:
        server.wait_healthy()
        api = Api(server.url)
        consumers.append(start_consumer(server.url, amqp_url, work, "one", log_level))
        wait_for_consumers(amqp_url, 1)
        if "latency" not in options.skip:
            results["latency"] = measure_latency(api, images, work, options)
        if "makespan" not in options.skip:
            results["makespan"] = measure_makespan(
                api, images, work, options, consumers, server.url, amqp_url, log_level
            )
        if "memory" not in options.skip:
            results["memory"] = measure_memory(api, images, options, consumers[0])
    finally:
        for process in consumers:
            process.terminate()
            process.wait(60)
        server.stop()
        rabbit.remove(force=True, v=True)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(run())
