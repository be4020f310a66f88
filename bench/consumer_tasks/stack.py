"""What the consumer benchmarks start and talk to: RabbitMQ, the private API, consumers."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import httpx
import pika
import pika.exceptions

from bench.common import ROOT, ServerProcess, free_port
from bench.consumer_tasks.options import LABEL, TOKEN
from common.messages import CPU_QUEUE


def start_rabbitmq(client: docker.DockerClient) -> tuple[str, Any]:
    """A RabbitMQ container of our own; its URL and the container."""
    port = free_port()
    image = os.environ.get("RABBITMQ_IMAGE", "inference-server-ci/rabbitmq:3")
    container = client.containers.run(
        image,
        detach=True,
        name=f"bench-consumer-rabbitmq-{secrets.token_hex(4)}",
        ports={"5672/tcp": ("127.0.0.1", port)},
        labels=LABEL,
    )
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    deadline = time.monotonic() + 120
    while True:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
            return url, container
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                container.remove(force=True)
                raise RuntimeError("RabbitMQ did not start") from None
            time.sleep(1)


def start_consumer(
    api_url: str, amqp_url: str, work: Path, name: str, log_level: str = "WARNING"
) -> subprocess.Popen[bytes]:
    """`python -m job_consumer` with a unique id."""
    env = {
        **os.environ,
        "RABBITMQ_URL": amqp_url,
        "PRIVATE_API_URL": api_url,
        "INTERNAL_TOKEN": TOKEN,
        "CONSUMER_ID": f"bench-{name}-{secrets.token_hex(3)}",
        "GPU_DEVICE": "",
        "WORK_DIR": str(work / name),
        "PULL_MISSING_IMAGES": "false",
        "LOG_LEVEL": log_level,
    }
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "job_consumer"], cwd=ROOT, env=env, stdout=log, stderr=log)


class Api:
    """The calls the benchmark makes to the private API."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"X-Internal-Token": TOKEN}, timeout=120)

    def model(self, tag: str, **params: Any) -> str:
        """Register a CPU model; its id."""
        hid = f"bench-{secrets.token_hex(4)}"
        query = {
            "container_tag": tag,
            "human_readable_id": hid,
            "use_gpu": False,
            "timeout": 600,
            "mem_limit": "256m",
            "cpus": 1,
            **params,
        }
        response = self.http.post("/api/models/", params=query)
        response.raise_for_status()
        return hid

    def submit(self, hid: str, data: bytes) -> str:
        """Post a task; its uid (accepted when this returns)."""
        response = self.http.post("/api/tasks/", params={"human_readable_id": hid}, files={"zip_file": ("i.zip", data)})
        response.raise_for_status()
        return str(json.loads(response.content))

    def wait(self, uid: str, poll: float = 0.02, timeout: float = 900) -> dict[str, Any]:
        """Poll until the task is final; its status JSON."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = dict(self.http.get(f"/api/tasks/{uid}/status").json())
            if body["status"] in ("finished", "failed", "cancelled"):
                if body["status"] != "finished":
                    raise RuntimeError(f"task {uid} {body['status']}: {body.get('error')}")
                return body
            time.sleep(poll)
        raise RuntimeError(f"task {uid} did not finish in {timeout} s")


def wait_for_consumers(amqp_url: str, count: int, timeout: float = 120) -> None:
    """Wait until `count` consumers take messages from the CPU queue (a consumer process needs a while to start)."""
    deadline = time.monotonic() + timeout
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        while True:
            consumers = channel.queue_declare(queue=CPU_QUEUE, durable=True, passive=True).method.consumer_count
            if consumers >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {consumers} of {count} consumers are consuming after {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        connection.close()


def private_api_server(work: Path, amqp_url: str) -> ServerProcess:
    """The private API (SQLite) publishing to amqp_url, not started yet."""
    port = free_port()
    return ServerProcess(
        [sys.executable, "-m", "private_api"],
        port=port,
        log_path=work / "private-api.log",
        env={
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DATA_DIR": str(work / "data"),
            "DATABASE_URL": "",
            "RABBITMQ_URL": amqp_url,
            "INTERNAL_TOKEN": TOKEN,
            "LOG_LEVEL": "WARNING",
        },
    )
