"""The private API's GET /metrics is never relayed: the public API has no such route, with or without a key."""

from __future__ import annotations

import httpx


def test_metrics_are_not_relayed(public: httpx.Client) -> None:
    for path in ("/metrics", "/metrics/", "/api/metrics"):
        assert public.get(path).status_code == 404, path
        assert public.get(path, headers={"Authorization": "Bearer " + "k" * 20}).status_code == 404, path
