"""The relay against a real stand-in private API: routes, status codes, headers, streaming, API keys."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator

import httpx
import pytest

from .conftest import USER_KEY
from .stand_in_private import StandIn

ZIP = {"zip_file": ("input.zip", b"PK\x05\x06" + b"\x00" * 18, "application/zip")}


def _post_model(client: httpx.Client, hid: str, **headers: str) -> httpx.Response:
    """Post a model with a small zip."""
    return client.post(
        "/api/models/", params={"container_tag": "busybox", "human_readable_id": hid}, files=ZIP, headers=headers
    )


def _post_task(client: httpx.Client, hid: str, param: str = "human_readable_id", **headers: str) -> str:
    """Post a task and return its uid."""
    res = client.post("/api/tasks/", params={param: hid}, files=ZIP, headers=headers)
    assert res.status_code == 200, res.text
    return str(json.loads(res.content))


@pytest.mark.parametrize("slash", ["", "/"])
def test_every_public_call_with_and_without_slash(public: httpx.Client, stand_in: tuple[StandIn, str], slash: str):
    state, _ = stand_in
    assert (
        public.post(
            "/api/models" + slash, params={"container_tag": "busybox", "human_readable_id": "m1"}, files=ZIP
        ).status_code
        == 200
    )
    assert public.get("/api/models" + slash).json()[0]["human_readable_id"] == "m1"
    res = public.post("/api/tasks" + slash, params={"model_human_readable_id": "m1"}, files=ZIP)
    assert res.status_code == 200
    uid = json.loads(res.content)
    assert public.get(f"/api/tasks/{uid}{slash}").status_code == 551
    assert public.get(f"/api/tasks/{uid}/status{slash}").json()["status"] == "pending"
    assert public.get(f"/api/tasks/{uid}/logs{slash}").text == "line 1\nline 2\n"
    assert public.delete(f"/api/tasks/{uid}{slash}").json() == {"detail": "deleted"}
    assert public.get(f"/api/tasks/{uid}{slash}").status_code == 554
    assert uid not in state.tasks


def test_status_codes_and_bodies_pass_through(public: httpx.Client, stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    assert _post_model(public, "m1").status_code == 200
    assert _post_model(public, "m1").json() == {"detail": "model 'm1' exists"}
    assert public.post("/api/models/", files=ZIP).status_code == 422
    unknown = public.post("/api/tasks/", params={"human_readable_id": "nope"}, files=ZIP)
    assert (unknown.status_code, unknown.json()) == (550, {"detail": "no model 'nope'"})
    uid = _post_task(public, "m1")
    state.tasks[uid]["status"] = "failed"
    failed = public.get(f"/api/tasks/{uid}")
    assert failed.status_code == 552
    assert failed.json() == {"detail": "task failed", "reason": "exit 1", "exit_code": 1, "log_tail": "boom"}
    state.models["full"] = {}
    full = public.post("/api/tasks/", params={"human_readable_id": "full"}, files=ZIP)
    assert (full.status_code, full.headers["retry-after"]) == (503, "30")


def test_error_bodies_are_flat(public: httpx.Client):
    res = _post_model(public, "nested")
    assert res.status_code == 422
    assert res.json() == {"detail": "nested message", "reason": "x"}


def test_nothing_internal_is_reachable(public: httpx.Client, stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    uid = "A" * 22
    assert public.get(f"/internal/tasks/{uid}/input").status_code == 404
    assert public.post(f"/internal/tasks/{uid}/claim", json={"consumer_id": "x"}).status_code == 404
    assert public.get("/api/models/m1/zip").status_code in (404, 405)
    assert public.get(f"/api/tasks/{uid}/input").status_code == 404
    assert public.get("/api/tasks/..%2F..%2Finternal").status_code in (404, 554)
    assert not [p for p in state.seen_paths if p.startswith("/internal")]


def test_client_cannot_forge_internal_headers(public: httpx.Client, stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    public.get("/api/models/", headers={"X-Internal-Token": "forged", "X-Owner": "someone", "Cookie": "a=b"})
    seen = state.seen_headers[-1]
    assert seen["x-internal-token"] != "forged"
    assert "x-owner" not in seen
    assert "cookie" not in seen


def test_model_posting_is_off_by_default(make_public: Callable[..., httpx.Client], stand_in: tuple[StandIn, str]):
    for value in ("", "0", "false", "no"):
        client = make_public(allow_public_post_model=value)
        res = _post_model(client, "m1")
        assert res.status_code == 403
        assert "ALLOW_PUBLIC_POST_MODEL" in res.json()["detail"]
    assert stand_in[0].models == {}
    assert _post_model(make_public(allow_public_post_model="yes"), "m1").status_code == 200


def test_only_the_hash_of_the_key_travels_on(make_public: Callable[..., httpx.Client], stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    client = make_public(allow_public_post_model="1")
    client.get("/api/models/", headers={"Authorization": f"Bearer {USER_KEY}"})
    seen = state.seen_headers[-1]
    assert seen["x-api-key-sha256"] == hashlib.sha256(USER_KEY.encode()).hexdigest()
    assert seen["x-public-call"] == "1" and "authorization" not in seen
    client.get("/api/models/")
    assert "x-api-key-sha256" not in state.seen_headers[-1]


def test_keys_are_never_logged(
    make_public: Callable[..., httpx.Client], caplog: pytest.LogCaptureFixture, dead_url: str
):
    client = make_public(private_api_url=dead_url)
    with caplog.at_level("DEBUG"):
        client.get("/api/models/", headers={"Authorization": f"Bearer {USER_KEY}"})
        client.get("/api/models/", headers={"Authorization": f"Bearer {USER_KEY}x"})
    assert caplog.records
    assert USER_KEY not in caplog.text


def test_large_upload_and_download_stream_through(public: httpx.Client, stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    size = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    public.post("/api/models/", params={"container_tag": "busybox", "human_readable_id": "big"})
    res = public.post(
        "/api/tasks/",
        params={"human_readable_id": "big"},
        content=body(),
        headers={"Content-Type": "application/zip"},
    )
    uid = json.loads(res.content)
    assert state.tasks[uid]["input_size"] == size
    assert state.tasks[uid]["input_sha256"] == expected
    state.tasks[uid]["status"] = "finished"
    state.output_size = size + 7
    digest, received = hashlib.sha256(), 0
    with public.stream("GET", f"/api/tasks/{uid}") as download:
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/zip"
        assert download.headers["content-length"] == str(size + 7)
        for chunk in download.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == size + 7


def test_private_api_down_is_503_not_a_hang(make_public: Callable[..., httpx.Client], dead_url: str):
    client = make_public(private_api_url=dead_url)
    res = client.get("/api/models/")
    assert res.status_code == 503
    assert res.headers["retry-after"]
    assert "not reachable" in res.json()["detail"]
    upload = client.post("/api/tasks/", params={"human_readable_id": "m"}, files=ZIP)
    assert upload.status_code == 503
    assert client.get("/healthz").json()["private_api"].startswith("unreachable")


def test_private_api_slow_is_504(make_public: Callable[..., httpx.Client], stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    client = make_public(private_api_timeout=0.5)
    state.delay = 3
    res = client.get("/api/models/")
    assert res.status_code == 504
    assert res.json() == {"detail": "the private API did not answer within 0.5s"}


def test_wrong_internal_token_is_502(make_public: Callable[..., httpx.Client]):
    client = make_public(internal_token="a-different-token-0123456789")
    res = client.get("/api/models/")
    assert res.status_code == 502
    assert "misconfigured" in res.json()["detail"]
    assert "token" not in res.json()["detail"]


def test_docs_and_health(public: httpx.Client):
    assert public.get("/docs").status_code == 200
    spec = public.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/api/models/",
        "/api/models/{hid}/",
        "/api/tasks/",
        "/api/keys/",
        "/api/keys/{key_id}/",
        "/api/keys/{key_id}/rotate/",
        "/api/audit/",
        "/api/tasks/{uid}/",
        "/api/tasks/{uid}/status/",
        "/api/tasks/{uid}/logs/",
        "/healthz",
        "/",
    }
    assert public.get("/healthz").json() == {"status": "ok", "private_api": "ok"}
