"""The SDK's part of fairness: an Idempotency-Key on every submission (the same on its own retries), own task list."""

from __future__ import annotations

import json

import httpx

from inference_client import InferenceClient

EMPTY_ZIP = b"PK\x05\x06" + b"\x00" * 18


def test_submit_sends_one_idempotency_key_also_on_its_retries_and_list_asks_for_all() -> None:
    seen: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        request.read()
        if request.url.path == "/api/tasks/" and request.method == "POST":
            if len(seen) == 1:
                return httpx.Response(429, json={"detail": "quota"}, headers={"Retry-After": "0"})
            return httpx.Response(200, json="u" * 32)
        return httpx.Response(200, json={"items": [], "total": 0})

    sleeps: list[float] = []
    client = InferenceClient("https://x.test", transport=httpx.MockTransport(server), sleep=sleeps.append)
    assert client.submit("m", EMPTY_ZIP) == "u" * 32
    keys = [r.headers["idempotency-key"] for r in seen]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) >= 32 and sleeps == [0.0]
    client.submit("m", EMPTY_ZIP, idempotency_key="scan-001")
    assert seen[-1].headers["idempotency-key"] == "scan-001"
    client.submit("m", EMPTY_ZIP)
    assert seen[-1].headers["idempotency-key"] not in (keys[0], "scan-001")  # a new key per submission
    assert client.list_tasks(all=True, limit=5).total == 0
    assert seen[-1].url.params["all"] == "true" and seen[-1].url.params["limit"] == "5"
    assert json.loads(json.dumps(client.list_tasks().model_dump(mode="json"))) == {"items": [], "total": 0}
