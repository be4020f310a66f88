"""Settings pieces shared by the services; each service has one settings class built from these."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from ipaddress import ip_address
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "MIN_SECRET_LENGTH",
    "PLACEHOLDER_SECRETS",
    "ServiceSettings",
    "configure_logging",
    "describe_settings_error",
    "is_true",
    "secret_problem",
    "settings_or_exit",
    "url_password_problem",
    "valid_uid",
]

PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "change_me", "changethis", "secret", "password", "xxx"}
MIN_SECRET_LENGTH = 16

_UID_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def valid_uid(uid: str) -> bool:
    """True when uid has the shape of a server-generated task uid (safe in a file path and a URL)."""
    return bool(_UID_RE.fullmatch(uid))


def is_true(value: str | bool | None) -> bool:
    """SPEC's truth values for flags given as environment variables: 1, true, yes (any case)."""
    if isinstance(value, bool):
        return value
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def secret_problem(value: str) -> str | None:
    """Why value is no usable secret (a placeholder, too short), or None; never repeats the value itself."""
    folded = value.strip().lower()
    if folded in PLACEHOLDER_SECRETS or (folded.startswith("<") and folded.endswith(">")):
        return "still holds a placeholder"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    return None


def _is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (a developer's own broker or database)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def url_password_problem(url: str) -> str | None:
    """Why the password in a broker or database URL is unusable, or None.

    A placeholder is always refused; a short password only towards another host (RabbitMQ's guest:guest and a
    developer's local database stay usable on localhost).
    """
    if not url:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return None
    password = unquote(parts.password)
    problem = secret_problem(password)
    if problem is None or (problem.startswith("is shorter") and _is_loopback(parts.hostname or "")):
        return None
    return f"its password {problem}"


class ServiceSettings(BaseSettings):
    """What every service reads: the log level and the shared internal token."""

    # Errors never echo values: many are secrets, and error messages end up in logs.
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False, hide_input_in_errors=True)

    log_level: str = "INFO"
    internal_token: str

    @field_validator("internal_token")
    @classmethod
    def _refuse_placeholder(cls, value: str) -> str:
        problem = secret_problem(value)
        if problem:
            raise ValueError(
                f"INTERNAL_TOKEN must be set to a random secret of {MIN_SECRET_LENGTH}+ characters (it {problem})"
            )
        return value

    # The URL fields belong to the services that read them; the password rule is the same for all.
    @field_validator("rabbitmq_url", "database_url", check_fields=False)
    @classmethod
    def _refuse_placeholder_password(cls, value: str, info: ValidationInfo) -> str:
        problem = url_password_problem(value)
        if problem:
            name = (info.field_name or "URL").upper()
            raise ValueError(f"{name} must carry a random password of {MIN_SECRET_LENGTH}+ characters ({problem})")
        return value


def describe_settings_error(exc: ValidationError) -> str:
    """One line naming each bad variable and why, without any value (the input may be a secret)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
        message = "must be set" if error["type"] == "missing" else str(error["msg"]).removeprefix("Value error, ")
        problems.append(message if message.startswith(name) else f"{name} {message}")
    return "; ".join(problems).replace("\n", " ")


def settings_or_exit(service: str, factory: Callable[[], SettingsT]) -> SettingsT:
    """The service's settings, or exit with one line on stderr saying what is wrong (no traceback, no values)."""
    try:
        return factory()
    except ValidationError as exc:
        print(f"{service}: bad settings: {describe_settings_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


def configure_logging(level: str) -> None:
    """One log format for all services."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pika narrates every connection at INFO; our own modules say what matters about the broker.
    logging.getLogger("pika").setLevel(max(logging.getLevelName(level.upper()), logging.WARNING))
