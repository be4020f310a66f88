"""The consumer's settings, read from the environment (SPEC's variables plus a few tunables)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from common.settings import ServiceSettings
from common.zips import ZipSettings
from job_consumer.sandbox import DEFAULT_PROGRESS_FILE, output_relative

__all__ = ["ConsumerSettings", "load_settings"]


class ConsumerSettings(ServiceSettings, ZipSettings):
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
    # Task and model folders live here and are bind-mounted into the model containers: the docker engine must see
    # this path as the same folder (compose mounts the host's folder at the same path).
    work_dir: Path = Path("/var/lib/inference-server/work")
    min_free_disk_bytes: int = Field(default=1024**3, ge=0)
    model_fill_timeout_seconds: float = Field(default=3600.0, gt=0)
    http_timeout_seconds: float = Field(default=60.0, gt=0)
    # How long calls to the private API are retried (connection errors, 5xx) before the consumer gives up.
    private_api_retry_seconds: float = Field(default=900.0, ge=0)
    consumer_heartbeat_seconds: float = Field(default=10.0, gt=0)
    gpu_reprobe_seconds: float = Field(default=60.0, gt=0)
    reap_seconds: float = Field(default=60.0, gt=0)
    # The tiny container that checks the GPU (a device request for GPU_DEVICE, command `true`).
    gpu_probe_image: str = "busybox"
    tmp_size: str = "1g"
    # Where models may write their progress (`0.42 message`); a file under /output, passed to them as PROGRESS_FILE.
    progress_file: str = DEFAULT_PROGRESS_FILE
    # The Prometheus metrics server (job_consumer/metrics.py); 0: none. Internal network only, never published.
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    # Tells this deployment's containers and task folders from another's on the same engine (compose: the project).
    deployment_name: str = ""

    @field_validator("gpu_device", "docker_host", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (as `.env.example` leaves it) means unset."""
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("progress_file")
    @classmethod
    def _under_output(cls, value: str) -> str:
        """PROGRESS_FILE must name a file under /output: the consumer reads it from that mount."""
        output_relative(value)
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

    def zip_limits(self) -> ZipSettings:
        """The limits input and model zips are extracted with (MAX_ZIP_* of common/zips.py, as at upload)."""
        return ZipSettings.model_validate(self.model_dump(include=set(ZipSettings.model_fields)))


def load_settings() -> ConsumerSettings:
    """Read the settings from the environment; a missing or placeholder secret fails here."""
    return ConsumerSettings()  # type: ignore[call-arg]
