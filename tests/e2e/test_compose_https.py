"""The whole deployment over HTTPS through Traefik: build, up, post, poll, cancel, down, up, data still there."""

from __future__ import annotations

import io
import json
import os
import ssl
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from .examples import build_example_images, run_examples
from .stack import Stack, free_port, traefik_certs

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(1800)]

TOKEN = "e2e-internal-token-" + uuid.uuid4().hex


def _zip(files: dict[str, bytes]) -> bytes:
    """A zip holding these files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_image() -> Iterator[str]:
    """A tiny model image: copies /input and /model into /output, and sleeps when /input/sleep exists."""
    base = os.environ.get("BUSYBOX_IMAGE", "busybox")
    tag = f"inference-server-e2e/model:{uuid.uuid4().hex[:12]}"
    script = (
        "echo model starting; [ -f /input/sleep ] && sleep 600; "
        "mkdir -p /output/nested && cp -r /input/. /output/ && cp /model/weights.txt /output/nested/ "
        "&& echo model done"
    )
    dockerfile = f'FROM {base}\nCMD ["sh", "-c", "{script}"]\n'
    client = docker.from_env()
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, labels={"e2e": tag})
    yield tag
    client.images.remove(tag, force=True)
    client.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The compose stack under a unique project name on free ports; removed with its volumes and images at the end."""
    folder = tmp_path_factory.mktemp("stack")
    project = f"inference-e2e-{uuid.uuid4().hex[:10]}"
    certs = traefik_certs(folder)
    env_file = folder / ".env"
    env = {
        "INTERNAL_TOKEN": TOKEN,
        "RABBITMQ_PASSWORD": "e2e-" + uuid.uuid4().hex,
        "ALLOW_PUBLIC_POST_MODEL": "true",
        "HTTP_PORT": str(free_port()),
        "HTTPS_PORT": str(free_port()),
        "TRAEFIK_CERTS_DIR": str(certs),
        "IMAGE_PREFIX": f"inference-server-e2e/{project}",
        "IMAGE_TAG": "e2e",
        "LOG_LEVEL": "INFO",
        "ENV_FILE": str(env_file),
        "CONSUMER_WORK_DIR": str(folder / "work"),
    }
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    stack = Stack(project=project, env_file=env_file, https_port=int(env["HTTPS_PORT"]))
    try:
        stack.up("--build")
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
        client = docker.from_env()
        for image in client.images.list(name=f"inference-server-e2e/{project}/*"):
            client.images.remove(image.id, force=True)
        client.close()


@pytest.fixture(scope="module")
def https(stack: Stack) -> Iterator[httpx.Client]:
    """A client that trusts only the stack's self-signed certificate."""
    certs = Path(stack.env_file.read_text().split("TRAEFIK_CERTS_DIR=")[1].splitlines()[0])
    context = ssl.create_default_context(cafile=str(certs / "cert.crt"))
    with httpx.Client(base_url=stack.url, verify=context, timeout=60, follow_redirects=False) as client:
        yield client


def _wait_routed(client: httpx.Client, seconds: float = 60) -> None:
    """Wait until Traefik answers through to the public API (it may be healthy a moment before that)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"Traefik did not route /healthz to the public API within {seconds}s")


def _poll(client: httpx.Client, uid: str, seconds: float = 180) -> httpx.Response:
    """Poll a task until it is no longer pending/running (551), checking it never answers 554 meanwhile."""
    deadline = time.monotonic() + seconds
    seen = set()
    while time.monotonic() < deadline:
        res = client.get(f"/api/tasks/{uid}")
        seen.add(res.status_code)
        assert res.status_code != 554, "an accepted task must never answer 554"
        if res.status_code != 551:
            return res
        time.sleep(1)
    raise AssertionError(f"task {uid} still pending after {seconds}s (answers seen: {seen})")


def test_whole_stack_over_https(stack: Stack, https: httpx.Client, model_image: str):
    try:
        _run_scenario(stack, https, model_image)
    except Exception as exc:
        raise AssertionError(f"{exc}\n--- compose logs ---\n{stack.logs()}") from exc


def _run_scenario(stack: Stack, https: httpx.Client, model_image: str) -> None:
    """Everything the issue lists, in the order a user meets it."""
    plain = httpx.get(f"http://localhost:{stack.env_file.read_text().split('HTTP_PORT=')[1].splitlines()[0]}/healthz")
    _wait_routed(https)
    assert plain.status_code in (301, 308) and plain.headers["location"].startswith("https://")
    assert https.get("/healthz").json()["private_api"] == "ok"
    assert https.get("/docs").status_code == 200
    assert https.get("/internal/tasks/x/input").status_code == 404

    hid = "e2e-copy"
    model_zip = _zip({"weights.txt": b"weights v1"})
    res = https.post(
        "/api/models",
        params={
            "container_tag": model_image,
            "human_readable_id": hid,
            "model_available": "true",
            "use_gpu": "false",
            "cpus": "1",
        },
        files={"zip_file": ("model.zip", model_zip, "application/zip")},
    )
    assert res.status_code == 200, res.text
    assert res.json()["model_available"] is True
    assert (
        https.post("/api/models/", params={"container_tag": model_image, "human_readable_id": hid}).status_code == 409
    )

    input_zip = _zip({"a.txt": b"alpha", "sub/b.txt": b"beta"})
    uids = []
    for param in ("human_readable_id", "model_human_readable_id"):
        res = https.post("/api/tasks/", params={param: hid}, files={"zip_file": ("in.zip", input_zip)})
        assert res.status_code == 200, res.text
        uids.append(json.loads(res.content))
    slow = json.loads(
        https.post(
            "/api/tasks", params={"human_readable_id": hid}, files={"zip_file": ("in.zip", _zip({"sleep": b""}))}
        ).content
    )
    assert (
        https.post(
            "/api/tasks/", params={"human_readable_id": "nope"}, files={"zip_file": ("i.zip", input_zip)}
        ).status_code
        == 550
    )
    assert https.post(
        "/api/tasks/", params={"human_readable_id": hid}, files={"zip_file": ("i.zip", b"no zip")}
    ).status_code in range(400, 500)

    for uid in uids:
        res = _poll(https, uid)
        assert res.status_code == 200, res.text
        assert res.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(res.content)) as archive:
            assert archive.read("a.txt") == b"alpha"
            assert archive.read("sub/b.txt") == b"beta"
            assert archive.read("nested/weights.txt") == b"weights v1"
        status = https.get(f"/api/tasks/{uid}/status/").json()
        assert (status["status"], status["model"], status["exit_code"]) == ("finished", hid, 0)
        assert "model done" in https.get(f"/api/tasks/{uid}/logs").text

    assert https.delete(f"/api/tasks/{slow}").status_code == 200
    assert https.get(f"/api/tasks/{slow}").status_code == 554
    assert https.delete(f"/api/tasks/{slow}/").status_code == 554

    stack.compose("down", "--timeout", "30")
    stack.up()
    _wait_routed(https)
    assert [m["human_readable_id"] for m in https.get("/api/models/").json()] == [hid]
    again = https.get(f"/api/tasks/{uids[0]}")
    assert again.status_code == 200
    with zipfile.ZipFile(io.BytesIO(again.content)) as archive:
        assert archive.read("a.txt") == b"alpha"
    after = json.loads(
        https.post("/api/tasks/", params={"human_readable_id": hid}, files={"zip_file": ("i.zip", input_zip)}).content
    )
    assert _poll(https, after).status_code == 200


@pytest.fixture(scope="module")
def example_images() -> dict[str, str]:
    """Both example models of examples/ built as images (kept, so the next run's builds are cached)."""
    began = time.monotonic()
    images = build_example_images()
    print(f"example images built in {time.monotonic() - began:.1f} s")
    return images


def test_example_models_over_https(stack: Stack, https: httpx.Client, example_images: dict[str, str]):
    """The examples on NIfTI and NumPy volumes, as a user runs them; a too small shm_size fails saying so."""
    _wait_routed(https)
    began = time.monotonic()
    try:
        run_examples(https, example_images)
    except Exception as exc:
        raise AssertionError(f"{exc}\n--- compose logs ---\n{stack.logs()}") from exc
    print(f"example tasks done in {time.monotonic() - began:.1f} s")
