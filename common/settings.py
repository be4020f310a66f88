"""Settings pieces shared by the services; each service has one settings class built from these."""

from __future__ import annotations

import logging
import re

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PLACEHOLDER_SECRETS", "ServiceSettings", "configure_logging", "is_true", "valid_uid"]

PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "changethis", "secret"}

_UID_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")


def valid_uid(uid: str) -> bool:
    """True when uid has the shape of a server-generated task uid (safe in a file path and a URL)."""
    return bool(_UID_RE.fullmatch(uid))


def is_true(value: str | bool | None) -> bool:
    """SPEC's truth values for flags given as environment variables: 1, true, yes (any case)."""
    if isinstance(value, bool):
        return value
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


class ServiceSettings(BaseSettings):
    """What every service reads: the log level and the shared internal token."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    log_level: str = "INFO"
    internal_token: str

    @field_validator("internal_token")
    @classmethod
    def _refuse_placeholder(cls, value: str) -> str:
        if value.strip().lower() in PLACEHOLDER_SECRETS or len(value) < 16:
            raise ValueError("INTERNAL_TOKEN must be set to a random secret of at least 16 characters")
        return value


def configure_logging(level: str) -> None:
    """One log format for all services."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pika narrates every connection at INFO; our own modules say what matters about the broker.
    logging.getLogger("pika").setLevel(max(logging.getLevelName(level.upper()), logging.WARNING))
