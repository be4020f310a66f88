"""The relay's lean HTTP/1.1 client against a real stand-in private API and against raw sockets that misbehave."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from public_api.private_client import _target
from public_api.upstream import (
    IDLE_EXPIRY,
    IDLE_EXPIRY_WITH_BODY,
    MAX_BUFFERED,
    BrokenOff,
    ConnectFailed,
    PoolTimedOut,
    ReadTimedOut,
    UpstreamPool,
    _header_line,
)

from .servers import ThreadServer, free_port
from .stand_in_private import TOKEN, StandIn, create_stand_in

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _pool(url: str, **overrides: float) -> UpstreamPool:
    """A pool with the relay's header and short timeouts (overridable)."""
    options: dict[str, float] = {"connect_timeout": 2, "read_timeout": 5, "pool_timeout": 2, "max_connections": 4}
    options.update(overrides)
    return UpstreamPool(
        url,
        headers={"X-Internal-Token": TOKEN},
        connect_timeout=options["connect_timeout"],
        read_timeout=options["read_timeout"],
        pool_timeout=options["pool_timeout"],
        max_connections=int(options["max_connections"]),
        max_idle=4,
    )


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """A request's head, up to the blank line."""
    return await reader.readuntil(b"\r\n\r\n")


async def _serve(handler: Handler, scenario: Callable[[str], Awaitable[None]]) -> None:
    """Run `scenario(url)` against a raw TCP server whose connections `handler` serves."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await scenario(f"http://127.0.0.1:{port}")
    finally:
        server.close()


@pytest.fixture
def stand_in_server() -> Iterator[tuple[StandIn, str]]:
    """The stand-in private API on a real port."""
    state = StandIn()
    server = ThreadServer(create_stand_in(state)).start()
    yield state, server.url
    server.stop()


def test_keep_alive_chunked_upload_and_coalesced_download(stand_in_server: tuple[StandIn, str]):
    state, url = stand_in_server
    state.models["m"] = {"human_readable_id": "m"}
    pieces = [bytes([n % 251]) * (1000 + 7919 * n) for n in range(60)]
    expected = hashlib.sha256(b"".join(pieces)).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def scenario() -> None:
        async with _pool(url) as pool:
            # No content-length: the body goes chunked and arrives whole.
            posted = await pool.request("POST", "/api/tasks/?human_readable_id=m", body=body())
            assert posted.status_code == 200
            uid = json.loads(await posted.aread(1024))
            assert state.tasks[uid]["input_sha256"] == expected
            assert state.tasks[uid]["input_size"] == sum(map(len, pieces))
            for _ in range(20):
                poll = await pool.request("GET", f"/api/tasks/{uid}")
                assert poll.status_code == 551
                assert json.loads(await poll.aread(1024)) == {"detail": "task is pending"}
            state.tasks[uid]["status"] = "finished"
            state.output_size = 5 * 1024 * 1024 + 3
            download = await pool.request("GET", f"/api/tasks/{uid}")
            assert download.header("content-length") == str(state.output_size)
            sizes = [len(chunk) async for chunk in download.aiter_body()]
            assert sum(sizes) == state.output_size
            assert max(sizes) <= 2 * MAX_BUFFERED
            # One connection carried all 23 exchanges.
            assert pool.opened == 1

    asyncio.run(scenario())
    assert state.seen_headers[-1]["x-internal-token"] == TOKEN


def test_a_connection_closed_while_idle_is_replaced_for_a_bodiless_request():
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def scenario(url: str) -> None:
        async with _pool(url) as pool:
            for _ in range(3):
                res = await pool.request("GET", "/x")
                assert await res.aread(10) == b"ok"
                await asyncio.sleep(0.05)
            assert pool.opened == 3

    asyncio.run(_serve(answer_then_close, scenario))


def test_a_body_broken_off_midway_raises_after_what_arrived():
    async def short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"a" * 10)
        await writer.drain()
        writer.close()

    async def scenario(url: str) -> None:
        async with _pool(url) as pool:
            res = await pool.request("GET", "/x")
            received = b""
            with pytest.raises(BrokenOff, match="closed the connection"):
                async for chunk in res.aiter_body():
                    received += chunk
            assert received == b"a" * 10

    asyncio.run(_serve(short_body, scenario))


def test_silence_is_a_read_timeout_and_garbage_is_broken_off():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_head(reader)
        if head.startswith(b"GET /garbage"):
            writer.write(b"SMTP ready\r\n\r\n")
            await writer.drain()
        await asyncio.sleep(2)
        writer.close()

    async def scenario(url: str) -> None:
        async with _pool(url, read_timeout=0.3) as pool:
            with pytest.raises(ReadTimedOut, match=r"nothing for 0\.3s"):
                await pool.request("GET", "/silent")
            with pytest.raises(BrokenOff, match="not HTTP"):
                await pool.request("GET", "/garbage")

    asyncio.run(_serve(silent, scenario))


def test_an_early_answer_stops_the_upload_and_the_connection_is_not_reused():
    async def refuse_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _read_head(reader)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                break
            writer.write(b"HTTP/1.1 413 Too Large\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
            while await reader.read(65536):
                pass
            break
        writer.close()

    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for n in range(200):
            sent.append(n)
            await asyncio.sleep(0.005)
            yield b"x" * 4096

    async def scenario(url: str) -> None:
        async with _pool(url) as pool:
            res = await pool.request("POST", "/upload", headers=[("content-length", str(200 * 4096))], body=body())
            assert res.status_code == 413
            assert await res.aread(10) == b"{}"
            assert len(sent) < 200
            # The connection was left mid-body: the next request needs a new one.
            again = await pool.request("GET", "/again")
            assert again.status_code == 413
            await again.aclose()
            assert pool.opened == 2

    asyncio.run(_serve(refuse_body, scenario))


def test_pool_limit_and_dead_upstream():
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")
        await writer.drain()
        await asyncio.sleep(2)
        writer.close()

    async def scenario(url: str) -> None:
        async with _pool(url, max_connections=1, pool_timeout=0.2) as pool:
            first = await pool.request("GET", "/held")
            with pytest.raises(PoolTimedOut):
                await pool.request("GET", "/waits")
            await first.aclose()
            second = await pool.request("GET", "/after-release")
            assert second.status_code == 200
            await second.aclose()
        async with _pool(f"http://127.0.0.1:{free_port()}") as dead:
            with pytest.raises(ConnectFailed, match="cannot connect"):
                await dead.request("GET", "/healthz")

    asyncio.run(_serve(hold, scenario))


def test_request_targets_and_headers_cannot_be_split():
    assert _target("/api/tasks/", b"") == "/api/tasks/"
    assert _target("/api/tasks/", b"human_readable_id=a%20b&x=1") == "/api/tasks/?human_readable_id=a%20b&x=1"
    assert _target("/api/models/", b"description=a b\r\nX-Owner: me") == (
        "/api/models/?description=a%20b%0D%0AX-Owner:%20me"
    )
    with pytest.raises(ValueError, match="line break"):
        _header_line("x-request-id", "a\r\nX-Owner: me")
    assert _header_line("x-request-id", "abc") == b"x-request-id: abc\r\n"
    with pytest.raises(ValueError, match="http"):
        _pool("ftp://private-api:7000")


def test_idle_connections_are_reused_for_a_while_and_uploads_get_recent_ones(stand_in_server: tuple[StandIn, str]):
    state, url = stand_in_server
    state.models["m"] = {"human_readable_id": "m"}

    async def body() -> AsyncIterator[bytes]:
        yield b"PK" + b"x" * 100

    async def exchange(pool: UpstreamPool, method: str) -> int:
        if method == "POST":
            res = await pool.request("POST", "/api/tasks/?human_readable_id=m", body=body())
        else:
            res = await pool.request("GET", "/api/models/")
        await res.aread(1 << 20)
        return res.status_code

    def age(pool: UpstreamPool, seconds: float) -> None:
        for conn in pool._idle:
            conn.idle_since -= seconds

    async def scenario() -> None:
        async with _pool(url) as pool:
            assert await exchange(pool, "GET") == 200
            age(pool, IDLE_EXPIRY_WITH_BODY + 1)
            # An upload does not trust a connection idle that long; a bodiless request does.
            assert await exchange(pool, "POST") == 200
            assert pool.opened == 2
            age(pool, IDLE_EXPIRY_WITH_BODY + 1)
            assert await exchange(pool, "GET") == 200
            assert pool.opened == 2
            age(pool, IDLE_EXPIRY + 1)
            assert await exchange(pool, "GET") == 200
            assert pool.opened == 3
            assert len(pool._idle) == 1

    asyncio.run(scenario())


def test_a_chunked_answer_is_decoded_and_its_connection_reused():
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await _read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            await writer.drain()
        writer.close()

    async def scenario(url: str) -> None:
        async with _pool(url) as pool:
            for _ in range(2):
                res = await pool.request("GET", "/logs")
                assert res.header("transfer-encoding") == "chunked"
                assert await res.aread(100) == b"hello world"
            assert pool.opened == 1

    asyncio.run(_serve(chunked, scenario))


def test_bytes_after_a_complete_answer_retire_the_connection():
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbad")
        await writer.drain()
        await asyncio.sleep(2)
        writer.close()

    async def scenario(url: str) -> None:
        async with _pool(url) as pool:
            first = await pool.request("GET", "/x")
            assert await first.aread(10) == b"ok"
            second = await pool.request("GET", "/x")
            assert await second.aread(10) == b"ok"
            # The unasked-for second answer was never taken for the second request's answer.
            assert pool.opened == 2

    asyncio.run(_serve(chatty, scenario))
