"""Fixtures for the job consumer's tests: test model images, executors with unique ids, zip helpers."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from job_consumer.docker_executor import DockerExecutor
from job_consumer.sandbox import CONSUMER_LABEL
from tests.images.build import build_model_images


def _shared(request: pytest.FixtureRequest, name: str) -> Any:
    """A session fixture from tests/conftest.py, or None while it does not exist yet."""
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return None


@pytest.fixture(scope="session")
def consumer_docker(request: pytest.FixtureRequest) -> docker.DockerClient:
    """The docker engine (the shared `docker_client` fixture when there is one)."""
    client = _shared(request, "docker_client") or docker.from_env(timeout=120)
    try:
        client.ping()
    except Exception as exc:  # pragma: no cover - environment without docker
        pytest.skip(f"no docker engine: {exc}")
    return client


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
