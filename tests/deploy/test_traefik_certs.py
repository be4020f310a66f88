"""Traefik as compose runs it: no docker socket, unhealthy without a usable certificate, new ones served live."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import ROOT, Stack, free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

GENERATE = ROOT / "traefik/certs/generate_self_signed_certs"


@pytest.fixture(scope="module")
def traefik(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    """Only the traefik service of docker-compose.yaml, on free ports, its folder holding no certificate yet."""
    folder = tmp_path_factory.mktemp("traefik")
    certs = folder / "certs"
    certs.mkdir()
    for name in ("routes.yml", "tls.yml"):
        shutil.copy(ROOT / "traefik/certs" / name, certs / name)
    env_file = folder / ".env"
    subprocess.run([str(ROOT / "scripts/setup"), "env"], env={**os.environ, "ENV_FILE": str(env_file)}, check=True)
    overrides = {
        "ENV_FILE": str(env_file),
        "HTTP_PORT": str(free_port()),
        "HTTPS_PORT": str(free_port()),
        "TRAEFIK_CERTS_DIR": str(certs),
        "TRAEFIK_IMAGE": os.environ.get("TRAEFIK_IMAGE", "traefik:v3"),
    }
    kept = [line for line in env_file.read_text().splitlines() if line.split("=", 1)[0] not in overrides]
    env_file.write_text("\n".join([*kept, *(f"{k}={v}" for k, v in overrides.items())]) + "\n")
    stack = Stack(
        project=f"deploy-traefik-{uuid.uuid4().hex[:8]}", env_file=env_file, https_port=int(overrides["HTTPS_PORT"])
    )
    try:
        stack.compose("up", "-d", "--no-deps", "traefik", timeout=180)
        yield stack, certs
    finally:
        stack.compose("down", "-v", "--timeout", "5", check=False, timeout=120)


def _health(stack: Stack) -> tuple[str, str]:
    """The traefik container's health status and start time."""
    container = stack.compose("ps", "-q", "traefik").stdout.strip()
    state = json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True).stdout)[0]
    return state["State"]["Health"]["Status"], state["State"]["StartedAt"]


def _wait_health(stack: Stack, wanted: str, seconds: float = 90) -> str:
    """Wait until Traefik's healthcheck reports `wanted`; its start time then."""
    deadline = time.monotonic() + seconds
    status = ""
    while time.monotonic() < deadline:
        status, started = _health(stack)
        if status == wanted:
            return started
        time.sleep(1)
    raise AssertionError(f"traefik stayed {status!r}, not {wanted!r}, for {seconds}s\n{stack.logs()}")


def _served(stack: Stack) -> str:
    """The certificate Traefik serves for localhost, as PEM."""
    return ssl.get_server_certificate(("127.0.0.1", stack.https_port))


def _wait_served(stack: Stack, pem: str, seconds: float = 30) -> None:
    """Wait until Traefik serves exactly this certificate."""
    wanted = ssl.PEM_cert_to_DER_cert(pem)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ssl.PEM_cert_to_DER_cert(_served(stack)) == wanted:
            return
        time.sleep(0.5)
    raise AssertionError(f"Traefik did not serve the new certificate within {seconds}s")


def test_traefik_reads_no_docker_socket() -> None:
    compose = (ROOT / "docker-compose.yaml").read_text()
    traefik_block = compose.split("\n  traefik:\n", 1)[1].split("\n  public-api:\n", 1)[0]
    assert "docker.sock" not in traefik_block
    assert "providers.docker" not in traefik_block


def test_certificates_are_checked_and_picked_up_without_restart(traefik: tuple[Stack, Path]) -> None:
    stack, certs = traefik
    _wait_health(stack, "unhealthy")

    env = {**os.environ, "CERT_DIR": str(certs)}
    subprocess.run([str(GENERATE), "localhost"], env=env, check=True, capture_output=True)
    started = _wait_health(stack, "healthy")
    _wait_served(stack, (certs / "cert.crt").read_text())

    subprocess.run([str(GENERATE), "localhost", "30"], env=env, check=True, capture_output=True)
    second = (certs / "cert.crt").read_text()
    _wait_served(stack, second)
    assert _health(stack) == ("healthy", started), "the new certificate needed no restart"
    context = ssl.create_default_context(cafile=str(certs / "cert.crt"))
    with (
        socket.create_connection(("127.0.0.1", stack.https_port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        peer = tls.getpeercert() or {}
        assert ("DNS", "localhost") in peer["subjectAltName"]

    # A key that does not belong to the certificate: unusable, and the healthcheck says so.
    other = certs.parent / "other"
    subprocess.run(
        [str(GENERATE), "localhost"], env={**os.environ, "CERT_DIR": str(other)}, check=True, capture_output=True
    )
    shutil.copy(other / "cert.key", certs / "cert.key")
    _wait_health(stack, "unhealthy")
