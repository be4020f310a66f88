"""Dependencies of the routes, as Annotated aliases."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from common.settings import valid_uid
from private_api.config import Settings
from private_api.errors import TaskNotFound, Unauthorized, UnknownTask
from private_api.publisher import Publisher
from private_api.storage import Storage
from private_api.watching import Watcher


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


async def _sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


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


async def _watcher(request: Request) -> Watcher:
    watcher: Watcher = request.app.state.watcher
    return watcher


async def require_internal_token(request: Request, x_internal_token: Annotated[str | None, Header()] = None) -> None:
    """Every /api and /internal call carries the shared internal token."""
    expected: str = request.app.state.settings.internal_token
    if not x_internal_token or not secrets.compare_digest(x_internal_token.encode(), expected.encode()):
        raise Unauthorized("missing or wrong X-Internal-Token")


async def _task_uid(uid: str) -> str:
    """The uid path parameter; TaskNotFound (554) when it cannot be a task uid."""
    if not valid_uid(uid):
        raise TaskNotFound(f"no task {uid!r}")
    return uid


async def _internal_task_uid(uid: str) -> str:
    """The uid path parameter of a consumer call; UnknownTask (404) when it cannot be a task uid."""
    if not valid_uid(uid):
        raise UnknownTask(f"no task {uid!r}")
    return uid


async def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


# scope="function": the session (and its pooled connection) closes when the route returns, before a streamed answer
# is sent. Routes that stream a request body take SessionsDep instead and open short sessions around the stream.
SessionDep = Annotated[Session, Depends(_session, scope="function")]
SessionsDep = Annotated[sessionmaker[Session], Depends(_sessions)]
TaskUid = Annotated[str, Depends(_task_uid)]
InternalTaskUid = Annotated[str, Depends(_internal_task_uid)]
SettingsDep = Annotated[Settings, Depends(_settings)]
StorageDep = Annotated[Storage, Depends(_storage)]
PublisherDep = Annotated[Publisher, Depends(_publisher)]
EngineDep = Annotated[Engine, Depends(_engine)]
WatcherDep = Annotated[Watcher, Depends(_watcher)]
InternalAuth = Depends(require_internal_token)
