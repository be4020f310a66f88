"""Dependencies of the routes, as Annotated aliases."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from private_api.config import Settings
from private_api.errors import Unauthorized
from private_api.publisher import Publisher
from private_api.storage import Storage


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


# The trivial dependencies are async: a plain `def` would cost a thread hop on every request.
async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def _publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


def check_internal_token(request: Request, token: str | None) -> None:
    """Unauthorized unless token is the shared internal token."""
    expected: str = request.app.state.settings.internal_token
    if not token or not secrets.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("missing or wrong X-Internal-Token")


async def require_internal_token(request: Request, x_internal_token: Annotated[str | None, Header()] = None) -> None:
    """Every /api and /internal call carries the shared internal token."""
    check_internal_token(request, x_internal_token)


async def _owner(x_owner: Annotated[str | None, Header(max_length=128)] = None) -> str | None:
    return x_owner or None


async def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(_settings)]
StorageDep = Annotated[Storage, Depends(_storage)]
PublisherDep = Annotated[Publisher, Depends(_publisher)]
OwnerDep = Annotated[str | None, Depends(_owner)]
EngineDep = Annotated[Engine, Depends(_engine)]
InternalAuth = Depends(require_internal_token)
