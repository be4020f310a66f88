"""Fixtures for the job consumer's tests: test model images, executors with unique ids, zip helpers."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pika
import pika.exceptions
import pytest

from common.messages import CPU_QUEUE, GPU_QUEUE, declare_queues
from job_consumer.__main__ import build_worker
from job_consumer.config import load_settings
from job_consumer.docker_executor import DockerExecutor
from job_consumer.sandbox import CONSUMER_LABEL, TASK_LABEL
from job_consumer.worker import Worker
from tests.images.build import build_model_images


@pytest.fixture(scope="session")
def consumer_docker(docker_client: docker.DockerClient) -> docker.DockerClient:
    """The docker engine (tests/conftest.py's `docker_client`)."""
    return docker_client


@pytest.fixture(scope="session")
def model_images(consumer_docker: docker.DockerClient) -> dict[str, str]:
    """Build (or reuse) the tiny test model images; {name: tag}."""
    return build_model_images(consumer_docker)


@pytest.fixture
def consumer_id() -> str:
    """A consumer id no other test or engineer uses."""
    return f"test-consumer-{secrets.token_hex(5)}"


@pytest.fixture
def executor(consumer_docker: docker.DockerClient, consumer_id: str, tmp_path: Path) -> Iterator[DockerExecutor]:
    """A CPU executor with a unique consumer id; everything it labelled is removed afterwards."""
    ex = DockerExecutor(consumer_docker, consumer_id=consumer_id, gpu_device=None, work_dir=tmp_path / "work")
    yield ex
    ex.cleanup_leftovers()
    assert not consumer_docker.containers.list(all=True, filters={"label": f"{CONSUMER_LABEL}={consumer_id}"})


# ---- integration: RabbitMQ, the real private API (uvicorn subprocess), consumers -------------------------------

TOKEN = "consumer-test-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def amqp_url(rabbitmq_url: str) -> str:
    """RabbitMQ (tests/conftest.py's `rabbitmq_url`)."""
    return rabbitmq_url


def purge_queues(url: str) -> None:
    """Empty both task queues."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    declare_queues(channel)
    for name in (GPU_QUEUE, CPU_QUEUE):
        channel.queue_purge(name)
    connection.close()


def queue_length(url: str, name: str) -> int:
    """Messages waiting (not delivered) in a queue."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue=name, durable=True, passive=True).method.message_count)
    finally:
        connection.close()


class PrivateApi:
    """The real private API in a subprocess, plus the calls the tests make to it."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path
        self.http = httpx.Client(base_url=url, headers={"X-Internal-Token": TOKEN}, timeout=60)

    def add_model(self, tag: str, *, zip_file: bytes | None = None, **params: Any) -> dict[str, Any]:
        """Register a CPU model for tag (small limits unless given); its JSON."""
        query: dict[str, Any] = {
            "container_tag": tag,
            "human_readable_id": f"m-{secrets.token_hex(5)}",
            "use_gpu": False,
            "timeout": 60,
            "mem_limit": "128m",
            "shm_size": "64m",
            "model_available": zip_file is not None,
            **params,
        }
        files = {"zip_file": ("model.zip", zip_file, "application/zip")} if zip_file is not None else None
        response = self.http.post("/api/models/", params=query, files=files)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def submit(self, hid: str, data: bytes) -> str:
        """Post a task; its uid."""
        response = self.http.post(
            "/api/tasks/", params={"human_readable_id": hid}, files={"zip_file": ("in.zip", data, "application/zip")}
        )
        assert response.status_code == 200, response.text
        return str(json.loads(response.content))

    def status(self, uid: str) -> dict[str, Any]:
        """The task's status JSON."""
        response = self.http.get(f"/api/tasks/{uid}/status")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, uid: str, statuses: set[str], timeout: float = 90) -> dict[str, Any]:
        """Poll until the task's status is one of statuses; its status JSON."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.status(uid)
            if body["status"] in statuses:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"task {uid} still {body['status']} after {timeout} s: {body}")
            time.sleep(0.2)


@pytest.fixture
def private_api(amqp_url: str, tmp_path: Path) -> Iterator[PrivateApi]:
    """A fresh private API (SQLite, short lease) served by `python -m private_api`; queues purged."""
    purge_queues(amqp_url)
    port = _free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": "",
        "RABBITMQ_URL": amqp_url,
        "INTERNAL_TOKEN": TOKEN,
        "LEASE_SECONDS": "6",
        "MAX_ATTEMPTS": "3",
        "OUTBOX_INTERVAL_SECONDS": "0.5",
        "LOG_LEVEL": "WARNING",
    }
    log_path = tmp_path / "private-api.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [PYTHON, "-m", "private_api"], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    api = PrivateApi(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{api.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private API did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield api
    finally:
        api.http.close()
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        purge_queues(amqp_url)


def consumer_env(api: PrivateApi, amqp_url: str, consumer_id: str, work_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a consumer under test."""
    return {
        "RABBITMQ_URL": amqp_url,
        "PRIVATE_API_URL": api.url,
        "INTERNAL_TOKEN": TOKEN,
        "CONSUMER_ID": consumer_id,
        "GPU_DEVICE": "",
        "HEARTBEAT_SECONDS": "1",
        "REQUEUE_DELAY_SECONDS": "0.5",
        "WORK_DIR": str(work_dir),
        "PULL_MISSING_IMAGES": "false",
        "LOG_LEVEL": "INFO",
        **extra,
    }


class RunningWorker:
    """A Worker running in a background thread of the test process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error.append(exc)

    def stop(self, timeout: float = 60) -> None:
        """Request a graceful stop and wait for it."""
        self.worker.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        assert not self.error, self.error


@pytest.fixture
def start_worker(
    private_api: PrivateApi, amqp_url: str, tmp_path: Path, consumer_docker: docker.DockerClient
) -> Iterator[Callable[..., RunningWorker]]:
    """Factory: start in-process consumers (unique ids); all are stopped and their leftovers checked at the end."""
    started: list[RunningWorker] = []

    def start(consumer_id: str | None = None, **extra: str) -> RunningWorker:
        cid = consumer_id or f"test-consumer-{secrets.token_hex(5)}"
        env = consumer_env(private_api, amqp_url, cid, tmp_path / cid, **extra)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            settings = load_settings()
        running = RunningWorker(build_worker(settings))
        running.thread.start()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()
        running.worker.api.close()
        running.worker.executor.cleanup_leftovers()


def task_leftovers(client: docker.DockerClient, uid: str) -> list[str]:
    """Names of containers and volumes still labelled with the task uid."""
    label = {"label": f"{TASK_LABEL}={uid}"}
    containers = client.containers.list(all=True, sparse=True, filters=label)
    return [(c.attrs.get("Names") or [c.id])[0] for c in containers] + [
        v.name or "" for v in client.volumes.list(filters=label)
    ]
