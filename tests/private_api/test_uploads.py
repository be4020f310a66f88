"""Bad uploads get a clear 4xx and leave nothing behind: no task row, no file."""

from __future__ import annotations

import io
import os
import socket
import time
import zipfile
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from private_api.config import Settings
from private_api.receiving import receive_tail
from tests.private_api.conftest import AUTH, LiveServer
from tests.private_api.helpers import add_model, make_zip, symlink_zip


def _raw_zip(name: str, content: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(name), content)
    return buffer.getvalue()


_TWO_LETTERS = bytes(ord("a") + (i & 1) for i in range(256))


def _low_entropy(size: int) -> bytes:
    """Bytes that compress about 8x: too little to look like a bomb, enough to stay small."""
    return os.urandom(size).translate(_TWO_LETTERS)


def _bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\x00" * (20 * 1024**2))
    return buffer.getvalue()


def _nothing_left(api: TestClient, settings: Settings) -> None:
    assert api.get("/api/tasks").json()["total"] == 0
    for folder in ("inputs", "tmp"):
        assert list((settings.data_dir / folder).iterdir()) == [], folder


BAD_ZIPS = {
    "not a zip": (b"this is plain text, not a zip", "not a valid zip"),
    "truncated": (make_zip({"a.txt": b"y" * 5000})[:-30], "not a valid zip"),
    "dot-dot entry": (_raw_zip("../../etc/cron.d/evil"), "'..'"),
    "absolute path": (_raw_zip("/etc/passwd"), "absolute path"),
    "symlink": (symlink_zip(), "symbolic link"),
    "compression bomb": (_bomb(), "zip bomb"),
    "too many files": (make_zip({f"f{i}": b"" for i in range(60)}), "entries"),
    "too large when extracted": (
        make_zip({f"r{i}.bin": _low_entropy(10 * 1024**2) for i in range(4)}),
        "expands to",
    ),
    "empty file": (b"", "empty"),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_bad_zip_is_refused_clearly(api: TestClient, settings: Settings, case: str) -> None:
    add_model(api, "m")
    data, words = BAD_ZIPS[case]
    response = api.post("/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("in.zip", data)})
    assert 400 <= response.status_code < 500, response.text
    assert words in response.json()["detail"], response.json()
    _nothing_left(api, settings)


def test_bad_model_zip_is_refused(api: TestClient, settings: Settings) -> None:
    response = api.post(
        "/api/models",
        params={"container_tag": "busybox", "human_readable_id": "m", "model_available": True},
        files={"zip_file": ("m.zip", _raw_zip("../x"))},
    )
    assert response.status_code == 400
    assert api.get("/api/models").json() == []
    assert list((settings.data_dir / "models").iterdir()) == []


def test_upload_over_the_maximum_is_413(live: LiveServer, settings: Settings) -> None:
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as client:
        client.post("/api/models", params={"container_tag": "busybox", "human_readable_id": "m", "use_gpu": False})
        big = make_zip({"big.bin": os.urandom(10 * 1024**2)})
        assert len(big) > settings.max_upload_bytes
        response = client.post("/api/tasks", params={"human_readable_id": "m"}, files={"zip_file": ("in.zip", big)})
        assert response.status_code == 413
        assert str(settings.max_upload_bytes) in response.json()["detail"]

        def chunked():  # no Content-Length: the limit must hold while streaming too
            boundary = b"b0undary"
            yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="zip_file"; filename="a.zip"\r\n\r\n'
            for start in range(0, len(big), 65536):
                yield big[start : start + 65536]
            yield b"\r\n--" + boundary + b"--\r\n"

        streamed = client.post(
            "/api/tasks",
            params={"human_readable_id": "m"},
            content=chunked(),
            headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
        )
        assert streamed.status_code == 413
        assert client.get("/api/tasks").json()["total"] == 0
    assert list((settings.data_dir / "inputs").iterdir()) == []
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_aborted_upload_leaves_no_row_and_no_file(live: LiveServer, settings: Settings) -> None:
    with httpx.Client(base_url=live.url, headers=AUTH) as client:
        client.post("/api/models", params={"container_tag": "busybox", "human_readable_id": "m", "use_gpu": False})
    body_start = (
        b'--xx\r\nContent-Disposition: form-data; name="zip_file"; filename="a.zip"\r\n\r\n' + make_zip() + b"partial"
    )
    head = (
        f"POST /api/tasks?human_readable_id=m HTTP/1.1\r\nHost: x\r\nX-Internal-Token: {AUTH['X-Internal-Token']}\r\n"
        f"Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: {len(body_start) + 100000}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(head + body_start)
        time.sleep(0.5)
    time.sleep(1.0)
    with httpx.Client(base_url=live.url, headers=AUTH) as client:
        assert client.get("/api/tasks").json()["total"] == 0
    assert list((settings.data_dir / "inputs").iterdir()) == []
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_multipart_upload_streams_to_disk_exactly(live: LiveServer, settings: Settings) -> None:
    data = make_zip({f"slice{i}.raw": bytes([i]) * 100_000 for i in range(20)})
    with httpx.Client(base_url=live.url, headers=AUTH) as client:
        client.post("/api/models", params={"container_tag": "busybox", "human_readable_id": "m", "use_gpu": False})
        response = client.post(
            "/api/tasks",
            params={"human_readable_id": "m"},
            data={"note": "a form field before the file"},
            files={"zip_file": ("in.zip", data)},
        )
        assert response.status_code == 200, response.text
        uid = response.json()
    assert (settings.data_dir / "inputs" / f"{uid}.zip").read_bytes() == data


def test_only_the_first_zip_file_part_is_stored(live: LiveServer, settings: Settings) -> None:
    wanted = make_zip({"a.txt": b"wanted"})
    with httpx.Client(base_url=live.url, headers=AUTH) as client:
        client.post("/api/models", params={"container_tag": "busybox", "human_readable_id": "m", "use_gpu": False})
        response = client.post(
            "/api/tasks",
            params={"human_readable_id": "m"},
            files=[
                ("other", ("o.zip", make_zip({"o.txt": b"other"}))),
                ("zip_file", ("in.zip", wanted)),
                ("zip_file", ("second.zip", make_zip({"b.txt": b"second"}))),
            ],
        )
        assert response.status_code == 200, response.text
        uid = response.json()
    assert (settings.data_dir / "inputs" / f"{uid}.zip").read_bytes() == wanted
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_model_routes_answer_422_for_bad_query_fields_with_the_field(api: TestClient) -> None:
    add_model(api, "m")
    for params, word in [({"mem_limit": "lots"}, "mem_limit"), ({"container_tag": "-x"}, "docker image")]:
        response = api.patch("/api/models/m", params=params)
        assert response.status_code == 422, response.text
        assert word in response.text
    assert api.patch("/api/models/m", params={"description": "new"}).json()["description"] == "new"


def test_receive_tail_keeps_the_end_of_a_long_body() -> None:
    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await receive_tail(request, 10))

    app = Starlette(routes=[Route("/", endpoint, methods=["PUT"])])
    app.state.settings = SimpleNamespace(upload_idle_timeout_seconds=5)
    with TestClient(app) as client:
        pieces = (b"x" * 1000 for _ in range(50))
        assert client.put("/", content=b"".join(pieces) + b"0123456789").text == "0123456789"
        assert client.put("/", content=b"short").text == "short"
