"""The relayed calls are ordinary routes: their dependencies run, errors are flat JSON, the OpenAPI documents every
answer, queries are checked against the shared schemas, and the private API's own answers pass through unchanged."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pydantic
import pytest

from common.schemas import MAX_OFFSET, ModelIn, Paging, package_version
from public_api.auth import Caller
from public_api.config import Settings
from public_api.deps import current_caller
from public_api.main import create_app

from .servers import ThreadServer, read_answer, stalled_upload
from .stand_in_private import TOKEN, StandIn

UID = "A" * 22
ZIP = {"zip_file": ("input.zip", b"PK\x05\x06" + b"\x00" * 18, "application/zip")}


def test_root_names_the_service(make_public: Callable[..., httpx.Client]):
    # Clients of the original server call GET / as a hello-world check, with or without a key.
    res = make_public().get("/")
    assert res.status_code == 200
    assert res.json() == {"name": "InferenceServer public API", "version": package_version(), "docs": "/docs"}


def test_errors_of_the_relay_are_flat_json(make_public: Callable[..., httpx.Client]):
    client = make_public()
    key = {"Authorization": "Bearer " + "k" * 20}
    bad_uid = client.get("/api/tasks/not-a-uid/status", headers=key)
    assert (bad_uid.status_code, bad_uid.json()) == (554, {"detail": "task not found"})
    assert client.get("/api/tasks/", headers=key).status_code == 405
    assert client.put(f"/api/tasks/{UID}", headers=key).status_code == 405
    assert client.head("/api/models/", headers=key).status_code == 405
    assert client.get("/api/tasks//status", headers=key).status_code in (404, 554)


@pytest.fixture
def overridden(stand_in: tuple[StandIn, str]) -> Iterator[httpx.Client]:
    """A public API whose caller dependency is swapped, as tests of ordinary FastAPI routes do."""
    app = create_app(Settings(internal_token=TOKEN, private_api_url=stand_in[1]))
    app.dependency_overrides[current_caller] = lambda: Caller(key_sha256="swapped-owner")
    server = ThreadServer(app).start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
    server.stop()


def test_a_dependency_of_the_relayed_routes_runs_on_every_one(overridden: httpx.Client, stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    overridden.get(f"/api/tasks/{UID}/status")
    overridden.get(f"/api/tasks/{UID}")
    overridden.delete(f"/api/tasks/{UID}/")
    owners = [headers.get("x-api-key-sha256") for headers in state.seen_headers]
    assert owners == ["swapped-owner"] * 3


def test_the_openapi_documents_every_answer(public: httpx.Client):
    spec = public.get("/openapi.json").json()
    paths = spec["paths"]

    def codes(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    relay = {"401", "502", "503", "504"}
    assert {"200", "500", "550", "551", "552", "553", "554"} | relay <= codes("/api/tasks/{uid}/", "get")
    assert {"200", "400", "408", "413", "422", "429", "503", "507", "550"} <= codes("/api/tasks/", "post")
    assert {"200", "400", "403", "408", "409", "413", "422", "507"} <= codes("/api/models/", "post")
    for path, method in (("/api/tasks/{uid}/", "delete"), ("/api/tasks/{uid}/status/", "get")):
        assert {"200", "554"} | relay <= codes(path, method)
    assert {"200", "554"} <= codes("/api/tasks/{uid}/logs/", "get")
    failed = paths["/api/tasks/{uid}/"]["get"]["responses"]["552"]["content"]["application/json"]["schema"]
    assert spec["components"]["schemas"][failed["$ref"].rsplit("/", 1)[-1]]["properties"].keys() >= {
        "detail",
        "reason",
        "exit_code",
        "log_tail",
    }
    documented = {p["name"] for p in paths["/api/models/"]["post"]["parameters"]}
    assert documented == set(ModelIn.model_fields)
    task_query = {p["name"] for p in paths["/api/tasks/"]["post"]["parameters"]}
    assert task_query == {"human_readable_id", "model_human_readable_id", "callback_url"}
    assert "multipart/form-data" in paths["/api/tasks/"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize(
    "query",
    [
        {"human_readable_id": "m1"},
        {"container_tag": "busybox", "human_readable_id": "../etc"},
        {"container_tag": "busybox", "human_readable_id": "m1", "timeout": "0"},
        {"container_tag": "busybox", "human_readable_id": "m1", "mem_limit": "lots"},
        {"container_tag": "busybox", "human_readable_id": "m1", "cpus": "-1"},
        {"container_tag": "-bad tag", "human_readable_id": "m1"},
    ],
)
def test_a_bad_model_query_is_422_at_the_edge(public: httpx.Client, stand_in: tuple[StandIn, str], query: dict):
    state, _ = stand_in
    res = public.post("/api/models/", params=query, files=ZIP)
    assert res.status_code == 422
    assert not [p for p in state.seen_paths if p.startswith("/api/models")]


def test_a_bad_task_query_is_422_at_the_edge(public: httpx.Client, stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    assert public.post("/api/tasks/", params={"human_readable_id": "a/b"}, files=ZIP).status_code == 422
    assert not state.seen_paths


def test_a_get_or_delete_that_declares_a_body_is_relayed(public: httpx.Client, stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    listed = public.request("GET", "/api/models/", content=b"{}", headers={"Content-Type": "application/json"})
    assert (listed.status_code, listed.json()) == (200, [])
    status = public.request("GET", f"/api/tasks/{UID}/status", headers={"Content-Length": "0"})
    assert status.status_code == 554
    deleted = public.request("DELETE", f"/api/tasks/{UID}", content=b"x")
    assert deleted.status_code == 554
    assert all("content-length" not in headers for headers in state.seen_headers)
    # The connection is still good for the next call.
    assert public.get("/api/models").status_code == 200


@pytest.mark.parametrize(
    ("model", "status", "retry_after"),
    [("idle", 408, None), ("nodisk", 507, "300"), ("busy", 409, None), ("tiny", 413, None)],
)
def test_answers_of_the_private_api_to_an_upload_pass_unchanged(
    public: httpx.Client, stand_in: tuple[StandIn, str], model: str, status: int, retry_after: str | None
):
    state, _ = stand_in
    state.models[model] = {"human_readable_id": model}
    res = public.post("/api/tasks/", params={"human_readable_id": model}, content=b"PK" + b"\x00" * 4096)
    assert res.status_code == status
    assert isinstance(res.json()["detail"], str)
    assert res.headers.get("retry-after") == retry_after
    assert not state.tasks


def test_a_stalled_upload_is_dropped_with_408(make_public: Callable[..., httpx.Client], stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    state.models["m"] = {"human_readable_id": "m"}
    client = make_public(upload_idle_timeout_seconds=0.5)
    sock = stalled_upload(str(client.base_url), "/api/tasks/?human_readable_id=m", sent=b"--stalled\r\n")
    started = time.monotonic()
    with sock:
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"sent nothing for 0.5s" in answer
    assert time.monotonic() - started < 5
    assert not state.tasks
    assert client.get("/api/models/").status_code == 200


def test_stalled_uploads_use_a_pool_of_their_own(
    make_public: Callable[..., httpx.Client], stand_in: tuple[StandIn, str]
):
    state, _ = stand_in
    state.models["m"] = {"human_readable_id": "m"}
    client = make_public(private_api_max_uploads=2, private_api_max_connections=2, private_api_pool_timeout=0.3)
    stalled = [stalled_upload(str(client.base_url), "/api/tasks/?human_readable_id=m") for _ in range(2)]
    try:
        time.sleep(0.5)
        for _ in range(10):
            assert client.get(f"/api/tasks/{UID}/status").status_code == 554
        one_more = client.post("/api/tasks/", params={"human_readable_id": "m"}, content=b"PK")
        assert one_more.status_code == 503
        assert "limit of uploads" in one_more.json()["detail"]
        assert one_more.headers["retry-after"]
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize(
    "query", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"offset": MAX_OFFSET + 1}, {"offset": "1e30"}]
)
def test_shared_paging_refuses_absurd_values(query: dict):
    # The private API's listing takes its paging from here: a value no database takes is a 422, never a 500.
    with pytest.raises(pydantic.ValidationError):
        Paging.model_validate(query)
    assert Paging.model_validate({"limit": 500, "offset": MAX_OFFSET}).offset == MAX_OFFSET
