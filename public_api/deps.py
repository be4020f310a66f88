"""Dependencies the routes take: settings, the pooled private API clients, the caller, the relay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response

from public_api.auth import Caller, authenticate
from public_api.config import Settings
from public_api.private_client import Upstream, relay

__all__ = ["CallerDep", "Relay", "RelayDep", "SettingsDep", "UpstreamDep", "current_caller"]


# Async, as every dependency here: a plain `def` would cost a thread hop per request.
async def _settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def _upstream(request: Request) -> Upstream:
    """The pooled clients made in the lifespan."""
    upstream: Upstream = request.app.state.upstream
    return upstream


SettingsDep = Annotated[Settings, Depends(_settings)]
UpstreamDep = Annotated[Upstream, Depends(_upstream)]


async def current_caller(request: Request) -> Caller:
    """Who is calling: the hash of the API key sent, if any (the private API decides whether it may)."""
    return authenticate(request)


CallerDep = Annotated[Caller, Depends(current_caller)]


@dataclass(frozen=True)
class Relay:
    """One incoming public call, ready to be sent on to the private API."""

    request: Request
    upstream: Upstream
    settings: Settings
    caller: Caller

    async def send(self, method: str, path: str, *, with_body: bool = False, waiting: bool = False) -> Response:
        """Relay to `path` with the hash of the caller's key: the private API checks it and scopes tasks by it."""
        return await relay(
            self.request,
            upstream=self.upstream,
            settings=self.settings,
            method=method,
            path=path,
            key_sha256=self.caller.key_sha256,
            with_body=with_body,
            waiting=waiting,
        )


async def _relay(request: Request, caller: CallerDep) -> Relay:
    """The relay for this request, over the app's pooled clients."""
    state = request.app.state
    return Relay(request=request, upstream=state.upstream, settings=state.settings, caller=caller)


RelayDep = Annotated[Relay, Depends(_relay)]
