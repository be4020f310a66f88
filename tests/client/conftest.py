"""Fixtures of the client tests: a fake public API for the fast tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The helper module sits beside this file; make it importable whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from fake_public_api import FakeServer

from inference_client import InferenceClient


@pytest.fixture
def fake_server() -> FakeServer:
    """A fresh fake public API."""
    return FakeServer()


@pytest.fixture
def fake_client(fake_server: FakeServer) -> Iterator[InferenceClient]:
    """An InferenceClient talking to the fake, with sleeping turned off."""
    with InferenceClient("https://inference.test", transport=fake_server.transport(), sleep=lambda s: None) as c:
        yield c
