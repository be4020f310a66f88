"""Multi-host on one machine: the main stack on an encrypted attachable swarm overlay, and a second compose project
(docker-compose.gpu-host.yaml, attached only to that overlay) whose consumer takes and finishes the tasks.

Uses a single-node swarm: it joins one when the engine is in none and leaves it at the end (only then).
"""

from __future__ import annotations

import io
import json
import ssl
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from .stack import Stack, free_port, traefik_certs
from .test_compose_https import _poll, _zip, model_image

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(1200)]

__all__ = ["model_image"]  # the fixture, shared with the single-host test
MAIN = ("-f", "docker-compose.yaml", "-f", "docker-compose.swarm.yaml")
GPU_HOST = ("-f", "docker-compose.gpu-host.yaml")


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a docker CLI command."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def overlay() -> Iterator[str]:
    """An encrypted, internal, attachable overlay on a swarm node (this engine made one when it is none)."""
    state = _docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    joined = False
    had_bridge = _docker("network", "inspect", "docker_gwbridge", check=False).returncode == 0
    if state == "inactive":
        if _docker("swarm", "init", check=False).returncode != 0:
            # Several addresses and no way to choose: the one the default route leaves from.
            address = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()[0]
            _docker("swarm", "init", "--advertise-addr", address)
        joined = True
    elif state != "active":
        pytest.skip(f"the engine is in swarm state {state!r}")
    name = f"deploy-swarm-{uuid.uuid4().hex[:8]}"
    try:
        _docker("network", "create", "-d", "overlay", "--attachable", "--internal", "--opt", "encrypted", name)
        yield name
    finally:
        _docker("network", "rm", name, check=False)
        if joined:
            _docker("swarm", "leave", "--force", check=False)
            if not had_bridge:  # swarm init made it and leave keeps it
                _docker("network", "rm", "docker_gwbridge", check=False)


def _env_file(folder: Path, values: dict[str, str]) -> Path:
    """An env file holding these values; ENV_FILE names it for the services."""
    path = folder / f"{uuid.uuid4().hex[:6]}.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in {**values, "ENV_FILE": str(path)}.items()))
    return path


@pytest.fixture(scope="module")
def stacks(overlay: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack, str]]:
    """The main stack without consumers of its own, and a GPU-host project with one CPU-only consumer; the name
    that consumer must have."""
    folder = tmp_path_factory.mktemp("swarm")
    certs = traefik_certs(folder)
    tag = uuid.uuid4().hex[:10]
    host_name = f"gpuhost-{tag}"
    shared = {
        "INTERNAL_TOKEN": "swarm-internal-token-" + uuid.uuid4().hex,
        "RABBITMQ_PASSWORD": "swarm-" + uuid.uuid4().hex,
        "INTERNAL_NETWORK": overlay,
        "IMAGE_PREFIX": f"inference-server-e2e/deploy-swarm-{tag}",
        "IMAGE_TAG": "e2e",
        "CONSUMER_WORK_DIR": str(folder / "work"),
    }
    main_env = {
        **shared,
        "ALLOW_PUBLIC_POST_MODEL": "true",
        "CPU_CONSUMERS": "0",
        "HTTP_PORT": str(free_port()),
        "HTTPS_PORT": str(free_port()),
        "TRAEFIK_CERTS_DIR": str(certs),
    }
    main = Stack(f"deploy-swarm-main-{tag}", _env_file(folder, main_env), int(main_env["HTTPS_PORT"]))
    gpu_env = {**shared, "GPU_COUNT": "1", "GPU_DEVICES": "cpu", "GPU_HOST_NAME": host_name}
    gpu_host = Stack(f"deploy-swarm-gpu-{tag}", _env_file(folder, gpu_env), 0)
    try:
        main.compose(*MAIN, "up", "-d", "--build", "--wait", "--wait-timeout", "240")
        gpu_host.compose(*GPU_HOST, "up", "-d", "--build", "--wait", "--wait-timeout", "120")
        yield main, gpu_host, f"{host_name}-cpu1"
    finally:
        gpu_host.compose(*GPU_HOST, "down", "--timeout", "20", check=False)
        main.compose(*MAIN, "down", "-v", "--timeout", "20", check=False)
        client = docker.from_env()
        for image in client.images.list(name=f"{shared['IMAGE_PREFIX']}/*"):
            client.images.remove(image.id, force=True)
        client.close()


def test_a_consumer_on_another_compose_project_takes_the_tasks(
    stacks: tuple[Stack, Stack, str], model_image: str
) -> None:
    main, gpu_host, consumer = stacks
    settings = dict(line.split("=", 1) for line in main.env_file.read_text().splitlines())
    containers = gpu_host.compose(*GPU_HOST, "ps", "-q").stdout.split()
    assert len(containers) == 1
    attached = json.loads(_docker("inspect", containers[0]).stdout)[0]["NetworkSettings"]["Networks"]
    assert list(attached) == [settings["INTERNAL_NETWORK"]], "the GPU host's consumer is on the overlay only"
    certs = Path(settings["TRAEFIK_CERTS_DIR"])
    context = ssl.create_default_context(cafile=str(certs / "cert.crt"))
    try:
        with httpx.Client(base_url=main.url, verify=context, timeout=60) as https:
            res = https.post(
                "/api/models/",
                params={"container_tag": model_image, "human_readable_id": "swarm", "use_gpu": "false"},
                files={"zip_file": ("m.zip", _zip({"weights.txt": b"remote weights"}))},
            )
            assert res.status_code == 200, res.text
            uids = []
            for index in range(2):
                files = {"zip_file": ("i.zip", _zip({"n": str(index).encode()}))}
                res = https.post("/api/tasks/", params={"human_readable_id": "swarm"}, files=files)
                assert res.status_code == 200, res.text
                uids.append(json.loads(res.content))
            for index, uid in enumerate(uids):
                res = _poll(https, uid)
                assert res.status_code == 200, res.text
                with zipfile.ZipFile(io.BytesIO(res.content)) as archive:
                    assert archive.read("n") == str(index).encode()
                    assert archive.read("nested/weights.txt") == b"remote weights"
                status = https.get(f"/api/tasks/{uid}/status").json()
                assert status["status"] == "finished"
                assert str(status["consumer_id"]).startswith(consumer), status
    except Exception as exc:
        logs = [
            stack.compose(*files, "logs", "--no-color", "--tail", "80", check=False, timeout=60).stdout
            for stack, files in ((main, MAIN), (gpu_host, GPU_HOST))
        ]
        raise AssertionError(f"{exc}\n--- main ---\n{logs[0]}\n--- GPU host ---\n{logs[1]}") from exc
