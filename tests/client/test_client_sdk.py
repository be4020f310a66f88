"""Fast tests of InferenceClient against the fake public API (MockTransport)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import pytest
from fake_public_api import FakeServer

from inference_client import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConnectionFailedError,
    ForbiddenError,
    InferenceClient,
    InsufficientStorageError,
    InternalServerError,
    ModelNotFoundError,
    NotOfferedError,
    ServerBusyError,
    TaskFailedError,
    TaskNotFinishedError,
    TaskNotFoundError,
    TaskOutputMissingError,
    TaskWaitTimeoutError,
    ValidationError,
)
from inference_client.errors import error_from_response


def make_folder(root: Path) -> Path:
    """A small input folder with nested files and an empty folder."""
    (root / "scans" / "ct").mkdir(parents=True)
    (root / "scans" / "ct" / "a.bin").write_bytes(bytes(range(256)) * 4000)
    (root / "notes.txt").write_text("patient 1\n")
    (root / "empty").mkdir()
    return root


def zip_names(data: bytes) -> dict[str, bytes]:
    """Entries of a zip in memory."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist()}


def test_constructor_refuses_bad_url_and_missing_ca() -> None:
    with pytest.raises(ValueError, match="http"):
        InferenceClient("inference.test")
    with pytest.raises(ValueError, match="CA certificate"):
        InferenceClient("https://inference.test", verify="/nonexistent/ca.pem")


def test_models_add_list_show_delete(fake_client: InferenceClient, fake_server: FakeServer, tmp_path: Path) -> None:
    weights = tmp_path / "model.zip"
    with zipfile.ZipFile(weights, "w") as archive:
        archive.writestr("weights.pt", b"w" * 100)
    model = fake_client.add_model(
        container_tag="echo:1", human_readable_id="seg", model_zip=weights, use_gpu=False, shm_size="2g", cpus=2
    )
    assert model.human_readable_id == "seg"
    assert model.model_available and not model.use_gpu
    sent = fake_server.requests[-1].url.params
    assert sent["model_available"] == "true" and sent["use_gpu"] == "false" and sent["shm_size"] == "2g"
    assert [m.human_readable_id for m in fake_client.list_models()] == ["seg"]
    assert fake_client.get_model("seg").shm_size == "2g"
    with pytest.raises(ConflictError):
        fake_client.add_model(container_tag="echo:1", human_readable_id="seg")
    fake_client.delete_model("seg")
    with pytest.raises(ModelNotFoundError):
        fake_client.get_model("seg")
    with pytest.raises(ModelNotFoundError):
        fake_client.delete_model("seg")


def test_add_model_refuses_a_non_zip_locally(fake_client: InferenceClient, tmp_path: Path) -> None:
    bad = tmp_path / "weights.zip"
    bad.write_text("not a zip")
    with pytest.raises(BadRequestError, match="not a zip"):
        fake_client.add_model(container_tag="echo", human_readable_id="m", model_zip=bad)
    with pytest.raises(BadRequestError, match="not found"):
        fake_client.add_model(container_tag="echo", human_readable_id="m", model_zip=tmp_path / "nope.zip")


def test_folder_round_trip_streams_a_zip(fake_client: InferenceClient, fake_server: FakeServer, tmp_path: Path) -> None:
    fake_client.add_model(container_tag="echo", human_readable_id="echo", use_gpu=False)
    folder = make_folder(tmp_path / "in")
    seen: list[int] = []
    uid = fake_client.submit("echo", folder, progress=seen.append)
    assert sum(seen) == 256 * 4000 + len("patient 1\n")
    upload = fake_server.requests[-1]
    assert "content-length" not in upload.headers  # streamed while zipping, chunked
    assert set(zip_names(fake_server.uploads[-1])) == {"scans/ct/a.bin", "notes.txt", "empty/"}
    final = fake_client.wait(uid)
    assert final.status == "finished" and final.is_final
    out = fake_client.download(uid, tmp_path / "out")
    assert out is not None
    assert (out / "scans" / "ct" / "a.bin").read_bytes() == (folder / "scans" / "ct" / "a.bin").read_bytes()
    assert (out / "empty").is_dir()
    zipped = fake_client.download(uid, tmp_path / "res" / "out.zip")
    assert zipped is not None and zip_names(zipped.read_bytes())["notes.txt"] == b"patient 1\n"
    assert not list((tmp_path / "res").glob("*.part"))


def test_submit_zip_file_sends_its_length(
    fake_client: InferenceClient, fake_server: FakeServer, tmp_path: Path
) -> None:
    fake_client.add_model(container_tag="echo", human_readable_id="echo")
    path = tmp_path / "in.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.txt", "x")
    fake_client.submit("echo", path)
    assert int(fake_server.requests[-1].headers["content-length"]) > path.stat().st_size
    assert fake_server.uploads[-1] == path.read_bytes()


def test_submit_refuses_bad_inputs_locally(fake_client: InferenceClient, tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(BadRequestError, match="not a zip"):
        fake_client.submit("echo", tmp_path / "plain.txt")
    with pytest.raises(BadRequestError, match="not found"):
        fake_client.submit("echo", tmp_path / "missing")
    with pytest.raises(TypeError):
        fake_client.submit("echo", 42)  # type: ignore[arg-type]


def test_every_task_status_maps_to_its_exception(fake_client: InferenceClient, fake_server: FakeServer) -> None:
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr("a.txt", "a")
    data = payload.getvalue()
    with pytest.raises(ModelNotFoundError):
        fake_client.submit("nope", data)
    for hid in ("slow", "fail", "nooutput", "echo"):
        fake_client.add_model(container_tag=hid, human_readable_id=hid)
    with pytest.raises(BadRequestError, match="not a valid zip"):
        fake_client.submit("echo", b"definitely not a zip")

    slow = fake_client.submit("slow", data)
    with pytest.raises(TaskNotFinishedError):
        fake_client.download(slow, io.BytesIO())

    failing = fake_client.submit("fail", data)
    assert fake_client.wait(failing).status == "failed"
    with pytest.raises(TaskFailedError) as failed:
        fake_client.download(failing, io.BytesIO())
    assert failed.value.model_exit_code == 3 and "boom" in (failed.value.log_tail or "")
    assert fake_client.failure(failing).reason == "the model exited with code 3"

    empty = fake_client.submit("nooutput", data)
    fake_client.wait(empty)
    with pytest.raises(TaskOutputMissingError):
        fake_client.download(empty, io.BytesIO())

    done = fake_client.submit("echo", data)
    fake_client.wait(done)
    fake_client.delete_model("echo")
    with pytest.raises(ModelNotFoundError):
        fake_client.download(done, io.BytesIO())

    fake_client.cancel(slow)
    for call in (fake_client.status, fake_client.logs, fake_client.cancel):
        with pytest.raises(TaskNotFoundError):
            call(slow)
    with pytest.raises(TaskNotFoundError, match="not a task uid"):
        fake_client.status("../models")


def test_wait_backs_off_and_times_out(fake_server: FakeServer) -> None:
    pauses: list[float] = []
    client = InferenceClient("https://x.test", transport=fake_server.transport(), sleep=pauses.append)
    client.add_model(container_tag="slow", human_readable_id="slow")
    uid = client.submit("slow", b"PK\x05\x06" + b"\x00" * 18)
    seen: list[str] = []
    # Plain polls (long polls against a server that ignores `wait` are in test_client_wait.py).
    final = client.wait(uid, poll_initial=1.0, poll_max=2.0, on_status=lambda s: seen.append(s.status), long_poll=False)
    assert final.is_final
    assert seen == ["pending", "running", "running", "running", "finished"]
    assert max(pauses) <= 2.2 and pauses[2] > pauses[1] * 1.2  # grows while the state stays the same
    uid = client.submit("slow", b"PK\x05\x06" + b"\x00" * 18)
    with pytest.raises(TaskWaitTimeoutError):
        client.wait(uid, timeout=0.0)


def test_busy_server_is_retried_after_retry_after(fake_client: InferenceClient, fake_server: FakeServer) -> None:
    fake_client.add_model(container_tag="echo", human_readable_id="echo")
    fake_server.busy_answers = 2
    waits: list[float] = []
    uid = fake_client.submit("echo", b"PK\x05\x06" + b"\x00" * 18, on_busy=waits.append)
    assert uid in fake_server.tasks and waits == [0.0, 0.0]
    fake_client.busy_retry_seconds = 0
    fake_server.busy_answers = 5
    with pytest.raises(ServerBusyError) as busy:
        fake_client.submit("echo", b"PK\x05\x06" + b"\x00" * 18)
    assert busy.value.retry_after == 0.0


def test_disk_full_and_stalled_upload_answers() -> None:
    full = error_from_response(507, {"detail": "the disk is full"}, "", {"retry-after": "300"})
    assert isinstance(full, InsufficientStorageError) and isinstance(full, ServerBusyError)
    assert (full.retry_after, full.exit_code, full.message) == (300.0, 11, "server disk full: the disk is full")
    idle = error_from_response(408, {"detail": "the upload sent nothing for 300s and was dropped"}, "")
    assert isinstance(idle, BadRequestError) and idle.exit_code == 7
    assert "sent nothing" in idle.message


def test_public_relay_without_item_routes(fake_client: InferenceClient, fake_server: FakeServer) -> None:
    fake_server.private_routes = False
    fake_client.add_model(container_tag="echo:2", human_readable_id="echo")
    assert fake_client.get_model("echo").container_tag == "echo:2"
    with pytest.raises(ModelNotFoundError):
        fake_client.get_model("other")
    with pytest.raises(NotOfferedError, match="private API"):
        fake_client.delete_model("echo")
    with pytest.raises(NotOfferedError):
        fake_client.list_tasks()


def test_api_key_is_sent(fake_server: FakeServer) -> None:
    fake_server.api_key = "k-123"
    with pytest.raises(AuthError):
        InferenceClient("https://x.test", transport=fake_server.transport()).list_models()
    client = InferenceClient("https://x.test", api_key="k-123", transport=fake_server.transport())
    assert client.list_models() == []
    assert "x-internal-token" not in fake_server.requests[-1].headers
    internal = InferenceClient("https://x.test", internal_token="t" * 20, transport=fake_server.transport())
    with pytest.raises(AuthError):
        internal.list_models()
    assert fake_server.requests[-1].headers["x-internal-token"] == "t" * 20


def test_forbidden_and_validation(fake_client: InferenceClient, fake_server: FakeServer) -> None:
    fake_server.allow_post_model = False
    with pytest.raises(ForbiddenError):
        fake_client.add_model(container_tag="echo", human_readable_id="m")
    err = error_from_response(422, {"detail": [{"loc": ["query", "cpus"], "msg": "must be > 0"}]}, "")
    assert isinstance(err, ValidationError) and str(err) == "cpus: must be > 0"


def test_server_and_network_failures() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            raise httpx.ConnectError("connection refused")
        if request.url.path.startswith("/api/models"):
            return httpx.Response(500, text="Internal Server Error")
        return httpx.Response(307, headers={"location": "https://x.test/elsewhere"})

    client = InferenceClient("https://x.test", transport=httpx.MockTransport(broken))
    with pytest.raises(ConnectionFailedError, match="cannot reach"):
        client.health()
    with pytest.raises(InternalServerError, match="500"):
        client.list_models()
    with pytest.raises(BadRequestError, match="redirect"):
        client.status("abcdefghijklmnopqrstuv")


def test_unsafe_output_zip_is_not_unpacked(fake_server: FakeServer, tmp_path: Path) -> None:
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.txt", "x")
    client = InferenceClient("https://x.test", transport=fake_server.transport())
    client.add_model(container_tag="echo", human_readable_id="echo")
    uid = client.submit("echo", evil.getvalue())
    client.wait(uid, poll_initial=0.01)
    with pytest.raises(Exception, match="unpacked safely"):
        client.download(uid, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_update_model_carries_over_every_field_it_does_not_change() -> None:
    current = {
        "human_readable_id": "seg", "container_tag": "seg:1", "description": "d", "use_gpu": True, "timeout": 600,
        "mem_limit": "8g", "shm_size": "1g", "cpus": 2.0, "network": True, "max_output_size": "7g", "user": "1000:1000",
        "version": 1,
    }  # fmt: skip
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=current)
        sent.append(request)
        return httpx.Response(200, json={**current, **dict(request.url.params), "version": 2})

    with InferenceClient("https://inference.test", transport=httpx.MockTransport(answer)) as client:
        model = client.update_model("seg", network=False, container_tag="seg:2")
    params = dict(sent[0].url.params)
    assert sent[0].method == "PUT" and model.version == 2
    assert params["container_tag"] == "seg:2" and params["network"] == "false"
    assert (params["max_output_size"], params["user"], params["mem_limit"]) == ("7g", "1000:1000", "8g")


def test_a_submission_whose_answer_was_lost_is_sent_again_with_the_same_key(tmp_path: Path) -> None:
    made: dict[str, str] = {}  # Idempotency-Key -> uid, as the server keeps them
    keys: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        request.read()
        key = request.headers["Idempotency-Key"]
        keys.append(key)
        uid = made.setdefault(key, f"t{len(made)}uid0123456789abcdef")
        if len(keys) == 1:
            return httpx.Response(504, json={"detail": "the private API did not answer in time"})
        return httpx.Response(200, json=uid)

    source = tmp_path / "in.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("a.txt", "a")
    with InferenceClient("https://inference.test", transport=httpx.MockTransport(answer)) as client:
        client._sleep = lambda seconds: None
        uid = client.submit("seg", source)
    assert len(keys) == 2 and keys[0] == keys[1]
    assert uid == made[keys[0]] and len(made) == 1
