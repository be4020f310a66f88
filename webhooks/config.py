"""Settings of the webhook sender, read from the environment only."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from common.settings import MIN_SECRET_LENGTH, ServiceSettings, secret_problem

__all__ = ["Settings", "get_settings"]


class Settings(ServiceSettings):
    """Where the private API is, the signing secret, and the hosts callbacks may go to."""

    private_api_url: str = "http://private-api:7000"
    webhook_secret: str = ""
    # Comma or space separated host names (`*.example.org` for subdomains); the private API reads the same variable.
    webhook_allowed_hosts: str = ""
    # Seconds between two looks for due deliveries.
    webhook_interval_seconds: float = Field(default=2.0, gt=0)
    # Seconds to connect to a receiver, and to wait for its answer.
    webhook_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Deliveries sent at the same time (a slow receiver holds one of them for at most the timeouts above).
    webhook_concurrency: int = Field(default=4, ge=1, le=64)

    @field_validator("private_api_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"PRIVATE_API_URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_secret(self) -> Settings:
        # Without allowed hosts no callback is ever accepted, so there is nothing to sign: the sender idles.
        problem = secret_problem(self.webhook_secret) if self.webhook_allowed_hosts.strip() else None
        if problem:
            raise ValueError(
                f"WEBHOOK_SECRET must be set to a random secret of {MIN_SECRET_LENGTH}+ characters (it {problem})"
            )
        return self


def get_settings() -> Settings:
    """Settings from the environment (a missing or placeholder secret fails here, loudly)."""
    return Settings()  # type: ignore[call-arg]
