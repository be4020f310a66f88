"""GET /metrics for Prometheus: no internal token (Prometheus scrapes without headers); internal network only.

The public API never relays it and Traefik routes nothing to the private API, so only what sits on the internal
network (a Prometheus container attached to it) can scrape it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus metrics in the text format (tasks, failures, queues, outbox, consumers, bytes in and out)."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
