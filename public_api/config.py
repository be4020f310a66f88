"""The public API's settings, read from the environment."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings, is_true

__all__ = ["Settings", "get_settings"]


class Settings(ServiceSettings):
    """Where the public API listens and where the private API is (which checks the API keys)."""

    # Errors must not echo values: they are secrets (keys, the internal token) and end up in logs.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    private_api_url: str = "http://private-api:7000"
    allow_public_post_model: Annotated[bool, BeforeValidator(is_true)] = False
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


def get_settings() -> Settings:
    """Settings from the environment (a missing or placeholder INTERNAL_TOKEN fails here, loudly)."""
    return Settings()  # type: ignore[call-arg]
