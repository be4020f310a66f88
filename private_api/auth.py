"""Who is calling: the Caller every /api route takes (owner, key, admin, quotas), resolved from the API key.

The public API passes on only `X-Api-Key-Sha256` (the hex sha256 of the caller's bearer token) and `X-Public-Call: 1`;
this module is the one authority on keys. A key is either a bootstrap key (API_KEYS / ADMIN_API_KEYS; owner: the
sha256 of the key) or a row of `api_keys` (owner: its id). The service is open, as before keys existed, only while
there is no key at all: no bootstrap key and no row, revoked ones included. Calls without `X-Public-Call` (the
consumers, operators with the internal token, tests) are scoped by `X-Owner` as before, and are admins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from common.keys import SHA256_RE, secret_sha256
from private_api import crud_keys
from private_api.config import Settings
from private_api.errors import Forbidden, KeyRefused
from private_api.orm import ApiKey, utcnow

__all__ = ["AdminDep", "Authenticated", "Caller", "CallerDep", "Keyring", "current_caller", "require_admin"]

FIRST_KEY_HINT = "docker compose exec private-api python -m private_api keys create --admin NAME"


@dataclass(frozen=True)
class Caller:
    """The caller of one request.

    owner: whose tasks it sees and makes (None: not scoped, e.g. an internal call or a service without keys).
    key_id, key_name: the API key used (for the audit), None without one.
    public: True when the call came through the public API.
    max_queued_tasks, max_running_tasks: the key's quotas (None: the defaults).
    """

    owner: str | None
    key_id: str | None = None
    key_name: str | None = None
    admin: bool = True
    public: bool = False
    max_queued_tasks: int | None = None
    max_running_tasks: int | None = None

    def sees(self, task_owner: str | None) -> bool:
        """True when this caller may see and change a task of that owner (tasks made while open: everyone)."""
        return self.owner is None or task_owner is None or task_owner == self.owner


def _when(moment: datetime) -> str:
    """A moment for a message, to the minute."""
    return f"{moment:%Y-%m-%d %H:%M} UTC"


class Keyring:
    """Resolves the key of a public call: the bootstrap keys from the environment, then the `api_keys` table."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        # sha256 -> admin; an admin key listed in both lists is an admin key.
        self.bootstrap: dict[str, bool] = {secret_sha256(k.get_secret_value()): False for k in settings.api_keys}
        self.bootstrap.update({secret_sha256(k.get_secret_value()): True for k in settings.admin_api_keys})
        # Once a key exists the service never opens again (keys are revoked, never deleted): no query after that.
        self._closed = bool(self.bootstrap)

    def is_open(self) -> bool:
        """True while no key exists at all (asked of the database until one does: the host CLI may add one)."""
        if not self._closed:
            with self.engine.connect() as connection:
                self._closed = crud_keys.any_key(connection)
        return not self._closed

    def bootstrap_caller(self, sha256: str) -> Caller | None:
        """The caller of a bootstrap key, None when it is none (no database needed)."""
        admin = self.bootstrap.get(sha256)
        if admin is None:
            return None
        name = "ADMIN_API_KEYS" if admin else "API_KEYS"
        return Caller(owner=sha256, key_id=sha256, key_name=f"{name} {sha256[:8]}", admin=admin, public=True)

    def resolve(self, sha256: str | None) -> Caller:
        """The caller for this key hash (blocking: the database); KeyRefused when it may not call."""
        if sha256 is not None and SHA256_RE.fullmatch(sha256):
            caller = self.bootstrap_caller(sha256) or self._stored_caller(sha256)
            if caller is not None:
                return caller
        if self.is_open():
            return Caller(owner=None, admin=True, public=True)
        if sha256 is None:
            raise KeyRefused("an API key is required: send 'Authorization: Bearer <key>'")
        raise KeyRefused("the API key is not valid")

    def _stored_caller(self, sha256: str) -> Caller | None:
        """The caller of a key in the table (None: no such key); KeyRefused when it is revoked or expired."""
        now = utcnow()
        with self.engine.connect() as connection:
            key = connection.execute(select(ApiKey).where(ApiKey.secret_sha256 == sha256)).first()
            if key is None:
                return None
            self._closed = True
            if key.revoked_at is not None:
                raise KeyRefused(f"the API key {key.name!r} ({key.id}) was revoked on {_when(key.revoked_at)}")
            if key.expires_at is not None and key.expires_at <= now:
                raise KeyRefused(f"the API key {key.name!r} ({key.id}) expired on {_when(key.expires_at)}")
            if key.last_used_at is None or key.last_used_at < now - timedelta(seconds=crud_keys.TOUCH_SECONDS):
                crud_keys.touch(connection, key.id, now)
                connection.commit()
        return Caller(
            owner=key.id,
            key_id=key.id,
            key_name=key.name,
            admin=key.admin,
            public=True,
            max_queued_tasks=key.max_queued_tasks,
            max_running_tasks=key.max_running_tasks,
        )


async def current_caller(
    request: Request,
    x_owner: Annotated[str | None, Header(max_length=128)] = None,
    x_public_call: Annotated[str | None, Header()] = None,
    x_api_key_sha256: Annotated[str | None, Header()] = None,
) -> Caller:
    """The caller: by its API key for a public call, by `X-Owner` for an internal one."""
    if x_public_call != "1":
        return Caller(owner=x_owner or None, key_id=x_owner or None)
    keyring: Keyring = request.app.state.keyring
    sha256 = x_api_key_sha256.lower() if x_api_key_sha256 else None
    # A bootstrap key needs no database; anything else is looked up in a thread (sync SQLAlchemy).
    caller = keyring.bootstrap_caller(sha256) if sha256 else None
    if caller is None:
        caller = await run_in_threadpool(keyring.resolve, sha256)
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
# On a router: every route of it checks the key, also those that do not take the caller (resolved once a request).
Authenticated = Depends(current_caller)


def require_admin(caller: Caller) -> Caller:
    """The caller, or Forbidden (403) when it is no admin."""
    if not caller.admin:
        raise Forbidden("this call needs an admin API key")
    return caller


async def _admin_caller(caller: CallerDep) -> Caller:
    return require_admin(caller)


# For the routes only an admin may call (models, keys, the audit).
AdminDep = Annotated[Caller, Depends(_admin_caller)]
