"""The SDK and the CLI against a live stack of real processes: private API, two public APIs, one CPU consumer.

RabbitMQ and the docker engine are real (the shared `rabbitmq_url`/`docker_client`/`busybox_image` fixtures when
tests/conftest.py provides them; otherwise RABBITMQ_URL or a broker container of our own, and a busybox image
built here). The tiny model images are busybox scripts; every container this module starts carries a unique
name or label.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from inference_client import (
    AuthError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InferenceClient,
    ModelNotFoundError,
    TaskFailedError,
    TaskNotFinishedError,
    TaskNotFoundError,
    TaskOutputMissingError,
    ValidationError,
)
from inference_client.cli import main
from job_consumer.sandbox import CONSUMER_LABEL, MODEL_ID_LABEL

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "client-live-token-" + secrets.token_hex(12)
API_KEY = "client-live-user-key-" + secrets.token_hex(8)
ADMIN_KEY = "client-live-admin-key-" + secrets.token_hex(8)
LABEL = {"inference-server.test": "client-live"}
FAST = ["--poll-interval", "0.3", "--poll-max", "1", "--timeout", "180"]

SCRIPTS = {
    # Copies the whole input under /output/result and writes a report: the folder round trip.
    "copy": (
        'set -e\nmkdir -p /output/result/empty\ncp -r /input/. /output/result/\necho "copied $(ls /input | wc -l)"\n'
    ),
    "fail": 'echo "loading input"\necho "error: no volume found in /input" >&2\nexit 3\n',
    "sleep": 'echo "working"\nsleep 120\necho late > /output/late.txt\n',
    "read-model": "set -e\ncp /model/config.txt /output/from-model.txt\n",
}


def _free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def engine(docker_client: docker.DockerClient) -> docker.DockerClient:
    """The docker engine (tests/conftest.py's `docker_client`)."""
    return docker_client


@pytest.fixture(scope="module")
def broker(rabbitmq_url: str) -> str:
    """RabbitMQ (tests/conftest.py's `rabbitmq_url`)."""
    return rabbitmq_url


@pytest.fixture(scope="module")
def images(busybox_image: str, engine: docker.DockerClient) -> dict[str, str]:
    """One tiny model image per script, tagged by content (reused across runs, never shared by name)."""
    base = busybox_image
    tags: dict[str, str] = {}
    for name, script in SCRIPTS.items():
        digest = hashlib.sha256((base + script).encode()).hexdigest()[:12]
        tag = f"inference-server-test/client-{name}:{digest}"
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "run.sh").write_text(script)
            (Path(tmp) / "Dockerfile").write_text(f'FROM {base}\nCOPY run.sh /run.sh\nCMD ["sh", "/run.sh"]\n')
            engine.images.build(path=tmp, tag=tag, rm=True, forcerm=True, labels=LABEL)
        tags[name] = tag
    return tags


class Service:
    """`python -m <module>` as a child process, its output in a log file."""

    def __init__(self, module: str, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.module = module
        self.log = log
        self.url = f"http://127.0.0.1:{port}" if port else ""
        full_env = {**os.environ, "LOG_LEVEL": "INFO", **env}
        if port:
            full_env.update(HOST="127.0.0.1", PORT=str(port))
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module], cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_healthy(self, timeout: float = 90) -> Service:
        """Wait until /healthz answers 200; fail with the log when the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.module} did not become healthy:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        """The end of the process's log."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    """The running services and what the tests need to reach them."""

    public_url: str
    locked_url: str
    private_url: str
    data_dir: Path
    consumer_id: str


@pytest.fixture(scope="module")
def stack(
    broker: str, engine: docker.DockerClient, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Private API (SQLite), an open public API, a locked one (posting off, API keys on), one CPU consumer."""
    root = tmp_path_factory.mktemp("client-live")
    consumer_id = f"client-live-{secrets.token_hex(5)}"
    services: list[Service] = []
    try:
        private = Service(
            "private_api",
            {"DATA_DIR": str(root / "data"), "DATABASE_URL": "", "RABBITMQ_URL": broker, "INTERNAL_TOKEN": TOKEN,
             "OUTBOX_INTERVAL_SECONDS": "0.5"},
            root / "private.log",
            _free_port(),
        )  # fmt: skip
        services.append(private)
        private.wait_healthy()
        # Keys are the private API's: the locked public API has a private API of its own, with bootstrap keys.
        private_locked = Service(
            "private_api",
            {"DATA_DIR": str(root / "data-locked"), "DATABASE_URL": "", "RABBITMQ_URL": broker,
             "INTERNAL_TOKEN": TOKEN, "API_KEYS": API_KEY, "ADMIN_API_KEYS": ADMIN_KEY},
            root / "private-locked.log",
            _free_port(),
        )  # fmt: skip
        services.append(private_locked)
        private_locked.wait_healthy()
        public = Service(
            "public_api",
            {"PRIVATE_API_URL": private.url, "INTERNAL_TOKEN": TOKEN, "ALLOW_PUBLIC_POST_MODEL": "true"},
            root / "public.log",
            _free_port(),
        )  # fmt: skip
        locked = Service(
            "public_api",
            {"PRIVATE_API_URL": private_locked.url, "INTERNAL_TOKEN": TOKEN, "ALLOW_PUBLIC_POST_MODEL": "false"},
            root / "locked.log",
            _free_port(),
        )  # fmt: skip
        services += [public, locked]
        consumer = Service(
            "job_consumer",
            {"RABBITMQ_URL": broker, "PRIVATE_API_URL": private.url, "INTERNAL_TOKEN": TOKEN,
             "CONSUMER_ID": consumer_id, "GPU_DEVICE": "", "WORK_DIR": str(root / "work"),
             "HEARTBEAT_SECONDS": "1", "PULL_MISSING_IMAGES": "false", "SHUTDOWN_GRACE_SECONDS": "5"},
            root / "consumer.log",
        )  # fmt: skip
        services.append(consumer)
        public.wait_healthy()
        locked.wait_healthy()
        yield Stack(public.url, locked.url, private.url, root / "data", consumer_id)
    finally:
        for service in reversed(services):
            service.stop()
        mine = {"label": f"{CONSUMER_LABEL}={consumer_id}"}
        for container in engine.containers.list(all=True, sparse=True, filters=mine):
            container.remove(force=True)
        for volume in engine.volumes.list(filters=mine):
            volume.remove(force=True)
        # Model volumes are kept by design; those of this module's models go with it.
        for volume in engine.volumes.list(filters={"label": MODEL_ID_LABEL}):
            if (volume.attrs.get("Labels") or {}).get(MODEL_ID_LABEL) in CREATED_MODELS:
                volume.remove(force=True)
        for service in services:
            if service.process.returncode not in (0, -15, None):
                print(f"--- {service.module} log ---\n{service.tail()}")


@pytest.fixture
def client(stack: Stack) -> Iterator[InferenceClient]:
    """An SDK client on the open public API."""
    with InferenceClient(stack.public_url) as sdk:
        yield sdk


@pytest.fixture
def operator(stack: Stack) -> Iterator[InferenceClient]:
    """An SDK client straight on the private API, with the internal token (what an operator may do)."""
    with InferenceClient(stack.private_url, internal_token=TOKEN) as sdk:
        yield sdk


def cli(stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str, url: str | None = None) -> tuple[int, str, str]:
    """Run the CLI in-process against the open public API (or url); exit code, stdout, stderr."""
    code = main(["--url", url or stack.public_url, "-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


CREATED_MODELS: set[str] = set()


def unique(name: str) -> str:
    """A model id no other test run uses (remembered, so its model volume is removed at the end)."""
    hid = f"client-live-{name}-{secrets.token_hex(4)}"
    CREATED_MODELS.add(hid)
    return hid


def add_model(stack: Stack, capsys: pytest.CaptureFixture[str], images: dict[str, str], name: str) -> str:
    """Register a CPU model for one of the test images through the CLI; its id."""
    hid = unique(name)
    limits = ["--mem-limit", "128m", "--time-limit", "120", "--cpus", "1"]
    code, out, err = cli(stack, capsys, "models", "add", hid, images[name], "--cpu", *limits, "--json")
    assert code == 0, err
    assert json.loads(out)["human_readable_id"] == hid
    return hid


def make_input(root: Path) -> Path:
    """An input folder with nested files, binary data and an empty folder."""
    (root / "series" / "ct").mkdir(parents=True)
    (root / "series" / "ct" / "slice-001.raw").write_bytes(os.urandom(700_000))
    (root / "series" / "meta.json").write_text('{"patient": "anon-1"}')
    (root / "README.txt").write_text("input for the live test\n")
    (root / "empty-dir").mkdir()
    return root


def test_health_and_models(stack: Stack, capsys: pytest.CaptureFixture[str], images: dict[str, str]) -> None:
    code, out, _ = cli(stack, capsys, "health", "--json")
    assert code == 0 and json.loads(out)
    hid = add_model(stack, capsys, images, "copy")
    code, out, _ = cli(stack, capsys, "models", "list", "--json")
    assert code == 0 and hid in {m["human_readable_id"] for m in json.loads(out)}
    code, out, _ = cli(stack, capsys, "models", "show", hid, "--json")
    assert code == 0 and json.loads(out)["use_gpu"] is False
    code, _, err = cli(stack, capsys, "models", "add", hid, images["copy"], "--cpu")
    assert code == 6, err  # 409: the id is taken
    code, _, err = cli(stack, capsys, "models", "add", unique("bad"), images["copy"], "--mem-limit", "lots")
    assert code == 7 and "mem_limit" in err  # 422
    code, _, _ = cli(stack, capsys, "models", "show", unique("missing"))
    assert code == 5


def test_folder_round_trip_through_the_cli(
    stack: Stack, capsys: pytest.CaptureFixture[str], images: dict[str, str], tmp_path: Path
) -> None:
    hid = add_model(stack, capsys, images, "copy")
    source = make_input(tmp_path / "in")
    out_dir = tmp_path / "out"
    code, _, err = cli(stack, capsys, "tasks", "submit", hid, str(source), "-o", str(out_dir), *FAST)
    assert code == 0, err
    result = out_dir / "result"
    for path in source.rglob("*"):
        twin = result / path.relative_to(source)
        assert twin.exists(), twin
        if path.is_file():
            assert twin.read_bytes() == path.read_bytes()
    assert (result / "empty").is_dir()


def test_zip_round_trip_in_a_subprocess(
    stack: Stack, capsys: pytest.CaptureFixture[str], images: dict[str, str], tmp_path: Path
) -> None:
    hid = add_model(stack, capsys, images, "copy")
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/b.txt", "hello")
    env = {**os.environ, "INFERENCE_SERVER_URL": stack.public_url}
    submitted = subprocess.run(
        [sys.executable, "-m", "inference_client.cli", "tasks", "submit", hid, str(archive), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    uid = json.loads(submitted.stdout)["uid"]
    fetched = subprocess.run(
        [sys.executable, "-m", "inference_client.cli", "tasks", "get", uid, "--wait", "-o", str(tmp_path / "o.zip"),
         *FAST],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    with zipfile.ZipFile(tmp_path / "o.zip") as zf:
        assert zf.read("result/a/b.txt") == b"hello"
    code, out, _ = cli(stack, capsys, "tasks", "logs", uid)
    assert code == 0 and "copied" in out
    code, out, _ = cli(stack, capsys, "tasks", "status", uid, "--json")
    assert json.loads(out)["status"] == "finished"


def test_model_zip_is_mounted_at_model(
    stack: Stack, capsys: pytest.CaptureFixture[str], images: dict[str, str], tmp_path: Path
) -> None:
    weights = tmp_path / "model.zip"
    with zipfile.ZipFile(weights, "w") as zf:
        zf.writestr("config.txt", "threshold=300\n")
    hid = unique("read-model")
    args = ["models", "add", hid, images["read-model"], "--cpu", "--cpus", "1", "--zip", str(weights), "--json"]
    code, out, err = cli(stack, capsys, *args)
    assert code == 0 and json.loads(out)["model_available"] is True, err
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x").write_text("x")
    code, _, err = cli(stack, capsys, "tasks", "submit", hid, str(tmp_path / "in"), "-o", str(tmp_path / "o"), *FAST)
    assert code == 0, err
    assert (tmp_path / "o" / "from-model.txt").read_text() == "threshold=300\n"


def test_failed_task_552(
    stack: Stack, capsys: pytest.CaptureFixture[str], images: dict[str, str], tmp_path: Path
) -> None:
    hid = add_model(stack, capsys, images, "fail")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    code, out, err = cli(stack, capsys, "tasks", "submit", hid, str(tmp_path / "in"), "--wait", "--json", *FAST)
    assert code == 8, err
    failure = json.loads(out)
    assert failure["status_code"] == 552 and failure["exit_code"] == 3
    assert "no volume found" in (failure["log_tail"] or "")


def test_pending_551_cancel_and_554(
    stack: Stack, capsys: pytest.CaptureFixture[str], images: dict[str, str], client: InferenceClient, tmp_path: Path
) -> None:
    hid = add_model(stack, capsys, images, "sleep")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    code, out, _ = cli(stack, capsys, "tasks", "submit", hid, str(tmp_path / "in"))
    uid = out.strip()
    assert code == 0 and uid
    code, _, err = cli(stack, capsys, "tasks", "get", uid, "-o", str(tmp_path / "o.zip"))
    assert code == 9, err  # 551 while pending or running
    with pytest.raises(TaskNotFinishedError):
        client.download(uid, io.BytesIO())
    code, _, err = cli(stack, capsys, "tasks", "get", uid, "--wait", "--timeout", "1", "--poll-interval", "0.3")
    assert code == 9 and "still" in err
    assert cli(stack, capsys, "tasks", "cancel", uid)[0] == 0
    for action in ("status", "logs", "get", "cancel"):
        assert cli(stack, capsys, "tasks", action, uid)[0] == 5, action  # 554
    with pytest.raises(TaskNotFoundError):
        client.status(uid)
    assert cli(stack, capsys, "tasks", "status", secrets.token_urlsafe(16))[0] == 5


def test_unknown_model_550_and_deleted_model(
    stack: Stack,
    capsys: pytest.CaptureFixture[str],
    images: dict[str, str],
    client: InferenceClient,
    operator: InferenceClient,
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    code, _, err = cli(stack, capsys, "tasks", "submit", unique("nope"), str(tmp_path / "in"))
    assert code == 5, err
    # A model with a waiting task is deleted only with force, which cancels the task (its status says why).
    hid = add_model(stack, capsys, images, "sleep")
    uid = client.submit(hid, tmp_path / "in")
    with pytest.raises(ConflictError):
        operator.delete_model(hid)
    assert operator.delete_model(hid, force=True) == [uid]
    with pytest.raises(ModelNotFoundError):
        operator.get_model(hid)
    status = client.status(uid)
    assert status.status == "cancelled" and "deleted" in (status.error or "")
    code, _, err = cli(stack, capsys, "models", "delete", hid)
    assert code == 5, err


def test_output_missing_553(
    stack: Stack, capsys: pytest.CaptureFixture[str], images: dict[str, str], client: InferenceClient, tmp_path: Path
) -> None:
    hid = add_model(stack, capsys, images, "copy")
    uid = client.submit(hid, _tiny_zip())
    assert client.wait(uid, poll_initial=0.3, timeout=180).status == "finished"
    # The server lost the file (disk trouble, manual cleanup): what users see then is 553.
    (stack.data_dir / "outputs" / f"{uid}.zip").unlink()
    with pytest.raises(TaskOutputMissingError):
        client.download(uid, io.BytesIO())
    assert cli(stack, capsys, "tasks", "get", uid, "-o", str(tmp_path / "o"))[0] == 10


def _tiny_zip() -> bytes:
    """A zip with one small file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.txt", "a")
    return buffer.getvalue()


def test_bad_uploads_are_refused(stack: Stack, client: InferenceClient, images: dict[str, str]) -> None:
    hid = unique("copy")
    client.add_model(container_tag=images["copy"], human_readable_id=hid, use_gpu=False, cpus=1)
    with pytest.raises(BadRequestError) as refused:
        client.submit(hid, b"this is not a zip file")
    assert refused.value.status_code is not None and 400 <= refused.value.status_code < 500
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../etc/escape", "x")
    with pytest.raises(BadRequestError, match=r"\.\."):
        client.submit(hid, evil.getvalue())
    with pytest.raises(ValidationError):
        # model_available=true with no zip: the server answers 422.
        client._request(
            "POST", "/api/models/",
            params={"container_tag": images["copy"], "human_readable_id": unique("x"), "model_available": "true"},
        )  # fmt: skip
    with pytest.raises(ConflictError):
        client.add_model(container_tag=images["copy"], human_readable_id=hid)


def test_locked_public_api_401_and_403(
    stack: Stack, capsys: pytest.CaptureFixture[str], images: dict[str, str]
) -> None:
    code, _, err = cli(stack, capsys, "models", "list", url=stack.locked_url)
    assert code == 4 and "API key" in err
    code, out, _ = cli(stack, capsys, "--api-key", API_KEY, "models", "list", "--json", url=stack.locked_url)
    assert code == 0 and isinstance(json.loads(out), list)
    code, _, err = cli(stack, capsys, "--api-key", ADMIN_KEY, "models", "add", unique("m"), images["copy"],
                       url=stack.locked_url)  # fmt: skip
    assert code == 4 and "ALLOW_PUBLIC_POST_MODEL" in err  # 403: public posting is off
    with InferenceClient(stack.locked_url) as anonymous, pytest.raises(AuthError):
        anonymous.list_models()
    with InferenceClient(stack.locked_url, api_key=API_KEY) as user, pytest.raises(ForbiddenError):
        user.add_model(container_tag=images["copy"], human_readable_id=unique("m"))


def test_sdk_run_and_failure(stack: Stack, images: dict[str, str], client: InferenceClient, tmp_path: Path) -> None:
    copy = unique("copy")
    client.add_model(container_tag=images["copy"], human_readable_id=copy, use_gpu=False, cpus=1)
    source = make_input(tmp_path / "in")
    final = client.run(copy, source, tmp_path / "out", timeout=180)
    assert final.status == "finished" and final.output_size
    assert (tmp_path / "out" / "result" / "series" / "meta.json").read_text() == '{"patient": "anon-1"}'
    fail = unique("fail")
    client.add_model(container_tag=images["fail"], human_readable_id=fail, use_gpu=False, cpus=1)
    with pytest.raises(TaskFailedError) as failed:
        client.run(fail, source, tmp_path / "never", timeout=180)
    assert failed.value.model_exit_code == 3
