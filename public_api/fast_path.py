"""The relayed public calls served straight from the ASGI scope, before FastAPI's routing and dependency resolution.

Those cost about two thirds of a relayed poll in the public API (0.4 of 0.6 ms CPU). The fast path runs the very
endpoints of public_api/routes.py with the same `Relay` their dependencies would build; everything else (docs,
/openapi.json, /healthz, unknown paths and methods) goes on to FastAPI unchanged.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from public_api.auth import authenticate
from public_api.deps import Relay
from public_api.errors import RelayError, error_response
from public_api.routes import RELAYED, Endpoint

__all__ = ["FastRelay", "match"]


def match(method: str, path: str) -> tuple[Endpoint, dict[str, Any]] | None:
    """The endpoint of a relayed call and its path parameters, or None when FastAPI should answer."""
    for route_method, regex, convertors, endpoint in RELAYED:
        if route_method != method:
            continue
        found = regex.match(path)
        if found is not None:
            params = {name: convertors[name].convert(value) for name, value in found.groupdict().items()}
            return endpoint, params
    return None


class FastRelay:
    """ASGI middleware: answers the relayed public calls itself, passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = match(scope["method"], get_route_path(scope)) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        endpoint, params = found
        # Starlette puts the application in the scope before its middleware runs: its state has what the
        # dependencies would give (settings; the pooled client made in the lifespan).
        state = scope["app"].state
        request = Request(scope, receive)
        try:
            relay = Relay(
                request=request,
                client=state.client,
                settings=state.settings,
                caller=authenticate(request, state.settings),
            )
            response = await endpoint(**params, relay=relay)
        except RelayError as exc:
            response = error_response(exc)
        await response(scope, receive, send)
