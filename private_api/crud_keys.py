"""API keys in the database: made, listed, revoked and rotated; only the sha256 of a secret is ever stored."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import Connection, exists, or_, select, update
from sqlalchemy.orm import Session

from common.keys import KeyCreated, KeyOut, KeyState, secret_sha256
from private_api.errors import Conflict, KeyNotFound
from private_api.orm import ApiKey, utcnow

__all__ = [
    "TOUCH_SECONDS",
    "any_key",
    "create_key",
    "expiry",
    "get_key",
    "key_out",
    "list_keys",
    "new_secret",
    "revoke_key",
    "rotate_key",
    "state_of",
    "touch",
]

# last_used_at is written at most this often per key: a busy key costs one write a minute, not one per call.
TOUCH_SECONDS = 60.0
_SECRET_PREFIX = "isk_"


def new_secret() -> str:
    """A fresh secret: 256 random bits, with a prefix that makes a leaked one easy to recognise."""
    return _SECRET_PREFIX + secrets.token_urlsafe(32)


def _new_id() -> str:
    """A fresh key id: "k" and 16 hex digits."""
    return "k" + secrets.token_hex(8)


def state_of(key: ApiKey, now: datetime | None = None) -> KeyState:
    """Whether the key is active, expired or revoked (revoked wins)."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def key_out(key: ApiKey) -> KeyOut:
    """The key as the API shows it: never its secret."""
    return KeyOut(
        id=key.id,
        name=key.name,
        admin=key.admin,
        state=state_of(key),
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
        max_queued_tasks=key.max_queued_tasks,
        max_running_tasks=key.max_running_tasks,
        created_by=key.created_by,
    )


def any_key(connection: Connection | Session) -> bool:
    """True when the table holds any key at all, revoked and expired ones included."""
    return bool(connection.scalar(select(exists().where(ApiKey.id.is_not(None)))))


def create_key(
    session: Session,
    *,
    name: str,
    admin: bool = False,
    expires_at: datetime | None = None,
    max_queued_tasks: int | None = None,
    max_running_tasks: int | None = None,
    created_by: str | None = None,
) -> KeyCreated:
    """Insert a key; the answer holds its secret, which is stored nowhere."""
    secret = new_secret()
    key = ApiKey(
        id=_new_id(),
        name=name,
        secret_sha256=secret_sha256(secret),
        admin=admin,
        created_at=utcnow(),
        expires_at=expires_at,
        max_queued_tasks=max_queued_tasks,
        max_running_tasks=max_running_tasks,
        created_by=created_by,
    )
    session.add(key)
    session.flush()
    return KeyCreated(**key_out(key).model_dump(), secret=secret)


def expiry(days: float | None) -> datetime | None:
    """When a key made now for this many days expires (None: never)."""
    return utcnow() + timedelta(days=days) if days is not None else None


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def get_key(session: Session, key_id: str) -> ApiKey:
    """The key with this id, or KeyNotFound."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise KeyNotFound(f"no API key {key_id!r}")
    return key


def revoke_key(session: Session, key: ApiKey) -> ApiKey:
    """Revoke a key (it answers 401 from the next call on); revoking it again changes nothing."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def rotate_key(session: Session, key: ApiKey) -> KeyCreated:
    """A new secret for the same key (same id, so its tasks stay its own); the old secret stops working at once."""
    state = state_of(key)
    if state != "active":
        raise Conflict(f"the API key {key.id} is {state}; make a new key instead of rotating it")
    secret = new_secret()
    key.secret_sha256 = secret_sha256(secret)
    session.flush()
    return KeyCreated(**key_out(key).model_dump(), secret=secret)


def touch(connection: Connection, key_id: str, now: datetime) -> None:
    """Set last_used_at to now unless it was set within TOUCH_SECONDS (the condition makes it once a minute)."""
    connection.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - timedelta(seconds=TOUCH_SECONDS)))
        .values(last_used_at=now)
    )
