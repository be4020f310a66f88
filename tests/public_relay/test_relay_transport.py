"""How the relay's pooled httpx client carries calls: keep-alive, streaming, early answers, limits, bad upstreams."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from public_api.private_client import KEEPALIVE_EXPIRY, _target

from .servers import Handler, RawServer
from .stand_in_private import StandIn

UID = "A" * 22


@pytest.fixture
def raw_upstream() -> Iterator[Callable[[Handler], RawServer]]:
    """A factory: a raw TCP upstream served by a handler, stopped after the test."""
    started: list[RawServer] = []

    def make(handler: Handler) -> RawServer:
        server = RawServer(handler).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """A request's head, up to the blank line."""
    return await reader.readuntil(b"\r\n\r\n")


def test_kept_alive_connections_carry_a_chunked_upload_polls_and_a_download(
    public: httpx.Client, stand_in: tuple[StandIn, str]
):
    state, _ = stand_in
    state.models["m"] = {"human_readable_id": "m"}
    pieces = [bytes([n % 251]) * (1000 + 7919 * n) for n in range(60)]
    expected = hashlib.sha256(b"".join(pieces)).hexdigest()
    # A generator body has no Content-Length: it reaches the relay chunked and goes on chunked.
    posted = public.post(
        "/api/tasks/", params={"human_readable_id": "m"}, content=iter(pieces), headers={"Content-Type": "x/y"}
    )
    assert posted.status_code == 200, posted.text
    uid = json.loads(posted.content)
    assert state.tasks[uid]["input_sha256"] == expected
    assert state.tasks[uid]["input_size"] == sum(map(len, pieces))
    for _ in range(20):
        poll = public.get(f"/api/tasks/{uid}")
        assert (poll.status_code, poll.json()) == (551, {"detail": "task is pending"})
    state.tasks[uid]["status"] = "finished"
    state.output_size = 5 * 1024 * 1024 + 3
    download = public.get(f"/api/tasks/{uid}")
    assert download.headers["content-length"] == str(state.output_size)
    assert len(download.content) == state.output_size
    assert download.content[:256] == bytes(range(256))
    # The upload went over a connection of the uploads' pool, the 21 other exchanges all over one other connection.
    upload, *others = state.seen_peers
    assert len(others) == 21
    assert set(others) == {others[0]} != {upload}


def test_keep_alive_settings_line_up_along_the_chain():
    # The private API keeps idle connections 75 s (private_api/__main__.py): the relay must give them up sooner.
    assert 0 < KEEPALIVE_EXPIRY < 75


def test_a_connection_the_upstream_closed_while_idle_is_replaced(
    make_public: Callable[..., httpx.Client], raw_upstream: Callable[[Handler], RawServer]
):
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]")
        await writer.drain()

    upstream = raw_upstream(answer_then_close)
    client = make_public(private_api_url=upstream.url)
    for _ in range(3):
        res = client.get("/api/models/")
        assert (res.status_code, res.json()) == (200, [])
    assert upstream.connections == 3


def test_an_early_answer_is_passed_on_and_the_connection_stays_usable(
    public: httpx.Client, stand_in: tuple[StandIn, str]
):
    state, _ = stand_in
    state.models["tiny"] = {"human_readable_id": "tiny"}
    big = b"x" * (8 * 1024 * 1024)
    refused = public.post("/api/tasks/", params={"human_readable_id": "tiny"}, content=big)
    assert refused.status_code == 413
    assert refused.json() == {"detail": "upload is larger than the maximum of 1024 bytes"}
    assert not state.tasks
    # The private API dropped the rest of the body; the same connection carries the next call.
    small = public.post("/api/tasks/", params={"human_readable_id": "tiny"}, content=b"PK" + b"\x00" * 100)
    assert small.status_code == 200
    assert len(set(state.seen_peers)) == 1


def test_the_pool_limit_answers_503_then_frees_up(
    make_public: Callable[..., httpx.Client], stand_in: tuple[StandIn, str]
):
    state, _ = stand_in
    client = make_public(private_api_max_connections=1, private_api_pool_timeout=0.3)
    state.models["m"] = {"human_readable_id": "m"}
    uid = json.loads(client.post("/api/tasks/", params={"human_readable_id": "m"}, content=b"PK").content)
    state.tasks[uid]["status"] = "finished"
    state.output_size = 256 * 1024 * 1024
    # A download nobody reads holds the one connection (the relay waits for its caller, not for memory).
    with client.stream("GET", f"/api/tasks/{uid}") as held:
        assert held.status_code == 200
        busy = httpx.get(f"{client.base_url}/api/models/", timeout=10)
        assert busy.status_code == 503
        assert busy.headers["retry-after"]
        assert "limit of open requests" in busy.json()["detail"]
    assert client.get("/api/models/").status_code == 200


def test_a_download_broken_off_midway_ends_short(
    make_public: Callable[..., httpx.Client], raw_upstream: Callable[[Handler], RawServer]
):
    async def short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/zip\r\ncontent-length: 1000\r\n\r\n" + b"a" * 10)
        await writer.drain()

    client = make_public(private_api_url=raw_upstream(short_body).url)
    received = b""
    with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", f"/api/tasks/{UID}") as res:
        assert res.headers["content-length"] == "1000"
        for chunk in res.iter_raw():
            received += chunk
    # What arrived before the break was passed on; the caller learns the body is short.
    assert received == b"a" * 10


def test_an_upstream_that_speaks_no_http_is_502_and_a_silent_one_504(
    make_public: Callable[..., httpx.Client], raw_upstream: Callable[[Handler], RawServer]
):
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        await asyncio.sleep(5)

    broken = make_public(private_api_url=raw_upstream(garbage).url).get("/api/models/")
    assert (broken.status_code, broken.json()) == (502, {"detail": "the private API broke off the request; try again"})
    slow = make_public(private_api_url=raw_upstream(silent).url, private_api_timeout=0.3).get(f"/api/tasks/{UID}")
    assert (slow.status_code, slow.json()) == (504, {"detail": "the private API did not answer within 0.3s"})


def test_a_chunked_answer_is_relayed_and_its_connection_reused(
    make_public: Callable[..., httpx.Client], raw_upstream: Callable[[Handler], RawServer]
):
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await _read_head(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            await writer.drain()
        await asyncio.sleep(5)

    upstream = raw_upstream(chunked)
    client = make_public(private_api_url=upstream.url)
    for _ in range(2):
        res = client.get(f"/api/tasks/{UID}/logs")
        assert (res.status_code, res.text) == (200, "hello world")
    assert upstream.connections == 1


def test_the_client_going_away_mid_upload_is_not_stored(public: httpx.Client, stand_in: tuple[StandIn, str]):
    state, _ = stand_in
    state.models["m"] = {"human_readable_id": "m"}
    gone = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"PK" + b"x" * 65536
        gone.set()
        raise OSError("the client died")

    with pytest.raises(OSError, match="the client died"):
        public.post(
            "/api/tasks/", params={"human_readable_id": "m"}, content=body(), headers={"Content-Length": "9999999"}
        )
    assert gone.is_set()
    assert public.get("/api/models/").status_code == 200
    assert not state.tasks


def test_queries_go_on_percent_encoded_and_cannot_split_the_request(
    public: httpx.Client, stand_in: tuple[StandIn, str]
):
    assert _target("/api/tasks/", b"") == "/api/tasks/"
    assert _target("/api/tasks/", b"human_readable_id=a%20b&x=1") == "/api/tasks/?human_readable_id=a%20b&x=1"
    assert _target("/api/models/", b"description=a b\r\nX-Owner: me") == (
        "/api/models/?description=a%20b%0D%0AX-Owner:%20me"
    )
    state, _ = stand_in
    query = {"container_tag": "busybox", "human_readable_id": "q1", "description": "a b\r\nX-Owner: me"}
    res = public.post("/api/models/", params=query)
    assert res.status_code == 200
    assert state.seen_paths[-1] == (
        "/api/models/?container_tag=busybox&human_readable_id=q1&description=a+b%0D%0AX-Owner%3A+me"
    )
    assert "x-owner" not in state.seen_headers[-1]
