"""API keys as both APIs see them: the hash that stands for a secret, and the shapes of the key calls."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, SecretStr
from pydantic_settings import NoDecode

from common.settings import MIN_SECRET_LENGTH, secret_problem

__all__ = [
    "KEY_ID_PATTERN",
    "SHA256_PATTERN",
    "BootstrapKeys",
    "KeyCreated",
    "KeyIn",
    "KeyOut",
    "KeyState",
    "secret_sha256",
]

KEY_ID_PATTERN = r"^k[0-9a-f]{16}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
SHA256_RE = re.compile(SHA256_PATTERN)

KeyState = Literal["active", "expired", "revoked"]


def secret_sha256(secret: str) -> str:
    """The hex sha256 of a key's secret: all the server ever stores or passes on of it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(value: object) -> object:
    """Comma-separated keys from the environment as a list, blanks dropped."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check(keys: list[SecretStr]) -> list[SecretStr]:
    """Every key a random secret; the key itself is never echoed (error messages end up in logs)."""
    if any(secret_problem(key.get_secret_value()) for key in keys):
        raise ValueError(f"every API key must be a random secret of {MIN_SECRET_LENGTH}+ characters")
    return keys


# API_KEYS / ADMIN_API_KEYS: keys set in the environment, which work next to the keys in the database.
BootstrapKeys = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split), AfterValidator(_check)]


class KeyIn(BaseModel):
    """`POST /api/keys/`: the new key's name, whether it is an admin key, its expiry and quotas."""

    name: str = Field(min_length=1, max_length=128, description="who or what uses it, e.g. 'dicom-node-2'")
    admin: bool = Field(default=False, description="may manage models and keys, and see every task")
    expires_in_days: float | None = Field(default=None, gt=0, le=36500, description="none: it never expires")
    max_queued_tasks: int | None = Field(default=None, ge=1, description="none: KEY_MAX_QUEUED_TASKS")
    max_running_tasks: int | None = Field(default=None, ge=1, description="none: no limit")


class KeyOut(BaseModel):
    """An API key without its secret."""

    id: str = Field(description="the key's id: the owner of the tasks made with it")
    name: str
    admin: bool
    state: KeyState
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = Field(default=None, description="to the minute")
    max_queued_tasks: int | None = None
    max_running_tasks: int | None = None
    created_by: str | None = Field(default=None, description="the id of the key that made it (none: the host)")


class KeyCreated(KeyOut):
    """A new key or a new secret: the only answer that ever holds the secret."""

    secret: str = Field(description="send it as 'Authorization: Bearer <secret>'; it is shown only this once")
