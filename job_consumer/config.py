"""The consumer's settings, read from the environment (SPEC's variables plus a few tunables)."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.settings import ServiceSettings

__all__ = ["ConsumerSettings", "load_settings"]


class ConsumerSettings(ServiceSettings):
    """Everything `python -m job_consumer` is configured by."""

    rabbitmq_url: str
    private_api_url: str = "http://private-api:7000"
    gpu_device: str | None = None
    consumer_id: str = ""
    max_log_bytes: int = Field(default=1024 * 1024, ge=1024)
    heartbeat_seconds: float = Field(default=3.0, gt=0, le=60)
    shutdown_grace_seconds: float = Field(default=60.0, ge=0)
    requeue_delay_seconds: float = Field(default=2.0, ge=0)
    stop_timeout_seconds: int = Field(default=5, ge=0)
    pids_limit: int = Field(default=4096, ge=16)
    pull_missing_images: bool = True
    docker_host: str | None = None
    work_dir: Path = Path(tempfile.gettempdir()) / "inference-consumer"
    max_input_bytes: int = Field(default=64 * 1024**3, gt=0)
    model_fill_timeout_seconds: float = Field(default=3600.0, gt=0)
    http_timeout_seconds: float = Field(default=60.0, gt=0)
    # auto: bind-mount task folders under WORK_DIR when the engine sees WORK_DIR at the same path (probed at the
    # first task); off: always volumes filled and read through the engine; on: always bind-mount (no probe).
    bind_work_dir: Literal["auto", "on", "off"] = "auto"

    @field_validator("gpu_device", "docker_host", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (as `.env.example` leaves it) means unset."""
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("bind_work_dir", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        """BIND_WORK_DIR also takes the usual spellings of true and false."""
        if isinstance(value, str):
            value = value.strip().lower()
            return {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off", "": "auto"}.get(
                value, value
            )
        return value

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        """RABBITMQ_URL must be an AMQP URL."""
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("RABBITMQ_URL must start with amqp:// or amqps://")
        return value

    @field_validator("private_api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        """PRIVATE_API_URL must be an HTTP URL."""
        if not value.startswith(("http://", "https://")):
            raise ValueError("PRIVATE_API_URL must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _default_consumer_id(self) -> ConsumerSettings:
        """CONSUMER_ID defaults to the host name plus the GPU it is pinned to (or `cpu`)."""
        if not self.consumer_id.strip():
            self.consumer_id = f"{socket.gethostname()}-{'gpu' + self.gpu_device if self.gpu_device else 'cpu'}"
        if not all(c.isalnum() or c in "._-" for c in self.consumer_id):
            raise ValueError("CONSUMER_ID may hold only letters, digits and ._-")
        return self


def load_settings() -> ConsumerSettings:
    """Read the settings from the environment; a missing or placeholder secret fails here."""
    return ConsumerSettings()  # type: ignore[call-arg]
