"""`python -m public_api` as its own process: configuration errors, and memory that stays flat under big transfers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

from .servers import ROOT, ProcessServer, free_port
from .stand_in_private import TOKEN, StandIn

CHUNK = 1024 * 1024


def _run_module(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `python -m public_api` with only this environment and collect its output."""
    base = {"PATH": os.environ["PATH"], "PORT": str(free_port())}
    return subprocess.run(
        [sys.executable, "-m", "public_api"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "INTERNAL_TOKEN must be set"),
        ({"INTERNAL_TOKEN": "change-me"}, "INTERNAL_TOKEN must be set"),
        ({"INTERNAL_TOKEN": "short-secret"}, "INTERNAL_TOKEN must be set"),
        ({"INTERNAL_TOKEN": TOKEN, "PRIVATE_API_URL": "private-api:7000"}, "PRIVATE_API_URL must start"),
    ],
)
def test_bad_configuration_fails_loudly(env: dict[str, str], message: str):
    result = _run_module(env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "short-secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_memory_stays_flat_for_big_transfers(stand_in: tuple[StandIn, str]):
    state, private_url = stand_in
    server = ProcessServer(
        "public_api", {"INTERNAL_TOKEN": TOKEN, "PRIVATE_API_URL": private_url, "LOG_LEVEL": "WARNING"}, free_port()
    ).wait_ready()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], server.rss_bytes())

    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            client.get("/api/models/")
            baseline = server.rss_bytes()
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            size = 256 * CHUNK
            block = os.urandom(CHUNK)

            def body() -> Iterator[bytes]:
                for _ in range(size // CHUNK):
                    yield block

            state.models["m"] = {"human_readable_id": "m"}
            res = client.post(
                "/api/tasks/",
                params={"human_readable_id": "m"},
                content=body(),
                headers={"Content-Type": "application/zip"},
            )
            uid = json.loads(res.content)
            assert state.tasks[uid]["input_size"] == size
            state.tasks[uid]["status"] = "finished"
            state.output_size = size
            with client.stream("GET", f"/api/tasks/{uid}") as download:
                received = sum(len(chunk) for chunk in download.iter_raw())
            assert received == size
            done.set()
            sampler.join()
        growth = peak[0] - baseline
        assert growth < 64 * CHUNK, f"public API grew by {growth / CHUNK:.1f} MiB moving 2 x 256 MiB"
    finally:
        done.set()
        server.stop()
