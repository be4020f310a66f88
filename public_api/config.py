"""The public API's settings, read from the environment."""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Annotated

from pydantic import BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from common.settings import PLACEHOLDER_SECRETS, ServiceSettings, is_true

__all__ = ["Settings", "get_settings"]

MIN_KEY_LENGTH = 16


def _split_keys(value: object) -> object:
    """Comma-separated keys from the environment as a list, blanks dropped."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, SecretStr):
        return _split_keys(value.get_secret_value())
    return value


Keys = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split_keys)]


class Settings(ServiceSettings):
    """Where the public API listens, where the private API is, and who may call it."""

    # Errors must not echo values: they are secrets (keys, the internal token) and end up in logs.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    private_api_url: str = "http://private-api:7000"
    allow_public_post_model: Annotated[bool, BeforeValidator(is_true)] = False
    api_keys: Keys = Field(default_factory=list)
    admin_api_keys: Keys = Field(default_factory=list)
    # Seconds to open a connection to the private API; past it the caller gets 502/504, never a hang.
    private_api_connect_timeout: float = Field(default=5.0, gt=0)
    # Seconds the private API may stay silent mid-request (between two chunks, or before it answers).
    private_api_timeout: float = Field(default=300.0, gt=0)
    # Seconds a request waits for a free pooled connection before it is answered 503.
    private_api_pool_timeout: float = Field(default=10.0, gt=0)
    private_api_max_connections: int = Field(default=200, ge=1)
    # Uploads have a pool of their own: slow or stalled uploads can never take a connection a poll needs.
    private_api_max_uploads: int = Field(default=100, ge=1)
    # Long polls (`status?wait=S`) too: each waiting caller holds one of these for up to a minute.
    private_api_max_waits: int = Field(default=1000, ge=1)
    # Seconds an upload may send nothing before it is dropped (408); the private API reads the same variable.
    upload_idle_timeout_seconds: float = Field(default=300.0, gt=0)

    @field_validator("private_api_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"PRIVATE_API_URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _check_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            secret = key.get_secret_value()
            if secret.lower() in PLACEHOLDER_SECRETS or len(secret) < MIN_KEY_LENGTH:
                # The key itself is never echoed: error messages end up in logs.
                raise ValueError(f"every API key must be a random secret of {MIN_KEY_LENGTH}+ characters")
        return keys

    @property
    def keys_required(self) -> bool:
        """True when API keys are configured, so every call needs one."""
        return bool(self.api_keys or self.admin_api_keys)

    @cached_property
    def owner_of_key(self) -> dict[str, str]:
        """The sha256 of every accepted key, by key; the hash is what the private API stores as owner."""
        keys = [k.get_secret_value() for k in self.api_keys + self.admin_api_keys]
        return {key: owner_id(key) for key in keys}

    @cached_property
    def admin_keys(self) -> frozenset[str]:
        """The keys that may post models."""
        return frozenset(k.get_secret_value() for k in self.admin_api_keys)


def owner_id(key: str) -> str:
    """The owner a key stands for: the hex sha256 of the key, so the key itself is stored nowhere."""
    return hashlib.sha256(key.encode()).hexdigest()


def get_settings() -> Settings:
    """Settings from the environment (a missing or placeholder INTERNAL_TOKEN fails here, loudly)."""
    return Settings()  # type: ignore[call-arg]
