"""Fixtures for the relay's tests: a real stand-in private API and public APIs in front of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from public_api.config import Settings
from public_api.main import create_app

from .servers import ThreadServer, free_port
from .stand_in_private import TOKEN, StandIn, create_stand_in

ADMIN_KEY = "admin-key-" + "a" * 24
USER_KEY = "user-key-" + "u" * 24
OTHER_KEY = "other-key-" + "o" * 24


@pytest.fixture
def stand_in() -> Iterator[tuple[StandIn, str]]:
    """A running stand-in private API: its state and its URL."""
    state = StandIn()
    server = ThreadServer(create_stand_in(state)).start()
    yield state, server.url
    server.stop()


@pytest.fixture
def make_public(stand_in: tuple[StandIn, str]) -> Iterator[Callable[..., httpx.Client]]:
    """A factory: a public API in front of the stand-in with these settings, and a client for it."""
    started: list[tuple[ThreadServer, httpx.Client]] = []

    def make(**overrides: Any) -> httpx.Client:
        values: dict[str, Any] = {"internal_token": TOKEN, "private_api_url": stand_in[1], **overrides}
        server = ThreadServer(create_app(Settings(**values))).start()
        client = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
        started.append((server, client))
        return client

    yield make
    for server, client in started:
        client.close()
        server.stop()


@pytest.fixture
def public(make_public: Callable[..., httpx.Client]) -> httpx.Client:
    """A public API with model posting on and no API keys."""
    return make_public(allow_public_post_model="true")


@pytest.fixture
def dead_url() -> str:
    """A URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
