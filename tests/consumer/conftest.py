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
from dataclasses import dataclass
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
from job_consumer.containers import Engine
from job_consumer.sandbox import INSTANCE_LABEL, TASK_LABEL, Sandbox
from job_consumer.worker import Worker
from job_consumer.workspace import Workspace
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


@dataclass
class Box:
    """The docker side of one consumer instance: its engine, workspace and sandbox (no broker, no private API)."""

    engine: Engine
    workspace: Workspace
    sandbox: Sandbox
    instance_id: str


def make_box(client: docker.DockerClient, work_dir: Path, instance_id: str, **engine_options: Any) -> Box:
    """A CPU consumer's docker side with WORK_DIR work_dir."""
    return Box(
        engine=Engine(client, pull_missing_images=False, **engine_options),
        workspace=Workspace(work_dir, instance_id=instance_id),
        sandbox=Sandbox(gpu_device=None, max_log_bytes=engine_options.get("max_log_bytes", 1024 * 1024)),
        instance_id=instance_id,
    )


def remove_instance_containers(client: docker.DockerClient, instance_id: str) -> None:
    """Remove every container labelled with the instance (a test's leftovers)."""
    for container in client.containers.list(
        all=True, sparse=True, filters={"label": f"{INSTANCE_LABEL}={instance_id}"}
    ):
        container.remove(force=True)


@pytest.fixture
def box(consumer_docker: docker.DockerClient, consumer_id: str, tmp_path: Path) -> Iterator[Box]:
    """A CPU consumer's docker side with a unique instance id; everything it labelled is checked gone afterwards."""
    made = make_box(consumer_docker, tmp_path / "work", f"{consumer_id}-{secrets.token_hex(6)}")
    yield made
    left = consumer_docker.containers.list(
        all=True, sparse=True, filters={"label": f"{INSTANCE_LABEL}={made.instance_id}"}
    )
    remove_instance_containers(consumer_docker, made.instance_id)
    assert not left, "a test left containers behind"


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

    def __init__(self, url: str, env: dict[str, str], log_path: Path) -> None:
        self.url = url
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=url, headers={"X-Internal-Token": TOKEN}, timeout=60)

    def start(self) -> None:
        """Start `python -m private_api` and wait until /healthz answers 200."""
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "private_api"], cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private API did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 30 s)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

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
def private_api_env() -> dict[str, str]:
    """Extra environment for the private API under test (a test module overrides this fixture to change it)."""
    return {}


@pytest.fixture
def private_api(amqp_url: str, tmp_path: Path, private_api_env: dict[str, str]) -> Iterator[PrivateApi]:
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
        # Fault-tolerance settings (PLAN.md; an older private API ignores them): quick backoff in tests.
        "INFRA_BACKOFF_SECONDS": "1",
        "INFRA_BACKOFF_MAX_SECONDS": "2",
        "REPUBLISH_AFTER_SECONDS": "10",
        "CONSUMER_STALE_SECONDS": "5",
        "LOG_LEVEL": "WARNING",
        **private_api_env,
    }
    api = PrivateApi(f"http://127.0.0.1:{port}", env, tmp_path / "private-api.log")
    try:
        api.start()
        yield api
    finally:
        api.http.close()
        api.stop()
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
        "MIN_FREE_DISK_BYTES": "1048576",
        "PRIVATE_API_RETRY_SECONDS": "120",
        "CONSUMER_HEARTBEAT_SECONDS": "1",
        "REAP_SECONDS": "2",
        "GPU_REPROBE_SECONDS": "5",
        "GPU_PROBE_IMAGE": os.environ.get("BUSYBOX_IMAGE", "inference-server-ci/busybox"),
        "PULL_MISSING_IMAGES": "false",
        "LOG_LEVEL": "INFO",
        "METRICS_PORT": "0",  # no metrics server unless a test asks for one (a fixed port would collide)
        **extra,
    }


def start_consumer_process(
    api: PrivateApi, amqp_url: str, consumer_id: str, tmp_path: Path, *, log_name: str | None = None, **extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """`python -m job_consumer` as its own process; it and the path of its log."""
    work_dir = Path(extra.pop("WORK_DIR", str(tmp_path / consumer_id)))
    env = {**os.environ, **consumer_env(api, amqp_url, consumer_id, work_dir, **extra)}
    log_path = tmp_path / (log_name or f"{consumer_id}-{time.monotonic_ns()}.log")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [PYTHON, "-m", "job_consumer"], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    return process, log_path


def stop_process(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM a process and wait; SIGKILL when it does not stop. Its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return int(process.returncode)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll check until it is true; fail with what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


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
        remove_instance_containers(consumer_docker, running.worker.api.instance_id)


def task_leftovers(client: docker.DockerClient, uid: str) -> list[str]:
    """Names of containers still labelled with the task uid."""
    containers = client.containers.list(all=True, sparse=True, filters={"label": f"{TASK_LABEL}={uid}"})
    return [(c.attrs.get("Names") or [c.id])[0] for c in containers]
