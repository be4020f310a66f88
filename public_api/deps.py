"""Dependencies the routes take: settings, the pooled private API client, the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request
from fastapi.responses import Response

from public_api.auth import Caller, authenticate
from public_api.config import Settings
from public_api.private_client import relay

__all__ = ["CallerDep", "ClientDep", "Relay", "RelayDep", "SettingsDep"]


async def _settings(request: Request) -> Settings:
    """The settings the app was created with (async: a sync dependency would cost a thread hop per request)."""
    settings: Settings = request.app.state.settings
    return settings


async def _client(request: Request) -> httpx.AsyncClient:
    """The pooled client made in the lifespan."""
    client: httpx.AsyncClient = request.app.state.client
    return client


SettingsDep = Annotated[Settings, Depends(_settings)]
ClientDep = Annotated[httpx.AsyncClient, Depends(_client)]


async def _caller(request: Request, settings: SettingsDep) -> Caller:
    """Who is calling (401 when keys are on and the key is missing or wrong)."""
    return authenticate(request, settings)


CallerDep = Annotated[Caller, Depends(_caller)]


@dataclass(frozen=True)
class Relay:
    """One incoming public call, ready to be sent on to the private API."""

    request: Request
    client: httpx.AsyncClient
    settings: Settings
    caller: Caller

    async def send(self, method: str, path: str, *, owned: bool, with_body: bool = False) -> Response:
        """Relay to `path`; `owned` calls carry the caller's owner id: the private API scopes tasks by it."""
        return await relay(
            self.request,
            client=self.client,
            settings=self.settings,
            method=method,
            path=path,
            owner=self.caller.owner if owned else None,
            with_body=with_body,
        )


async def _relay(request: Request, client: ClientDep, settings: SettingsDep, caller: CallerDep) -> Relay:
    """The relay for this request (authenticated first)."""
    return Relay(request=request, client=client, settings=settings, caller=caller)


RelayDep = Annotated[Relay, Depends(_relay)]
