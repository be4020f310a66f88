"""Settings of the private API, read from the environment only."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from common.keys import BootstrapKeys
from common.settings import ServiceSettings
from common.webhooks import parse_allowed_hosts
from common.zips import ZipSettings


class Settings(ServiceSettings, ZipSettings):
    """Everything the private API reads from its environment."""

    host: str = "0.0.0.0"
    port: int = 7000
    data_dir: Path = Path("/data")
    database_url: str = ""
    rabbitmq_url: str = "amqp://guest:guest@localhost:5672/%2F"

    max_upload_bytes: int = Field(default=20 * 1024**3, gt=0)
    max_log_bytes: int = Field(default=1024 * 1024, gt=0)
    max_queued_tasks: int = Field(default=10_000, gt=0)
    # Pending tasks a key may have (its max_queued_tasks overrides); past it a submission answers 429.
    key_max_queued_tasks: int = Field(default=100, gt=0)
    # A task whose key runs its max_running_tasks already is offered again after this long.
    key_running_wait_seconds: float = Field(default=5.0, ge=0)
    upload_idle_timeout_seconds: float = Field(default=300.0, gt=0)
    min_free_disk_bytes: int = Field(default=1024**3, ge=0)

    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    outbox_interval_seconds: float = Field(default=2.0, gt=0)
    # Pending tasks published this long ago and still not claimed are published again (lost or purged message).
    republish_after_seconds: float = Field(default=60.0, gt=0)
    # Releases for reasons of the host give the attempt back; this many at most, with exponential backoff.
    max_infra_retries: int = Field(default=20, ge=0)
    infra_backoff_seconds: float = Field(default=10.0, ge=0)
    infra_backoff_max_seconds: float = Field(default=600.0, ge=0)
    # A consumer whose last heartbeat is older than this is not live (3 x its CONSUMER_HEARTBEAT_SECONDS).
    consumer_stale_seconds: float = Field(default=30.0, gt=0)
    # Retention: an ended task's input zip goes after INPUT_RETENTION_SECONDS (0: at the sweeper's next round), its
    # output zip and log after OUTPUT_RETENTION_SECONDS (30 days); the sweeper runs every RETENTION_INTERVAL_SECONDS.
    input_retention_seconds: float = Field(default=0.0, ge=0)
    output_retention_seconds: float = Field(default=30 * 24 * 3600.0, gt=0)
    retention_interval_seconds: float = Field(default=30.0, gt=0)
    # Bootstrap API keys (comma-separated): they work next to the keys in the database; a task's owner is the
    # sha256 of such a key (as before keys were in the database, so older tasks stay visible).
    api_keys: BootstrapKeys = Field(default_factory=list)
    admin_api_keys: BootstrapKeys = Field(default_factory=list)
    # Waiting (`status?wait=S`): seconds between two reads of every watched task (changes here are seen at once).
    wait_interval_seconds: float = Field(default=0.5, gt=0, le=10)
    # Webhooks: hosts a callback_url may name (empty: callbacks refused); the webhooks service reads it too.
    webhook_allowed_hosts: str = ""
    # Backoff after a failed delivery (doubling up to the max), given up this long after the task ended.
    webhook_backoff_seconds: float = Field(default=10.0, gt=0)
    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_give_up_seconds: float = Field(default=86400.0, gt=0)
    # A delivery handed to a sender is not handed out again for this long (a sender that died mid-send).
    webhook_lease_seconds: float = Field(default=60.0, gt=0)

    @property
    def db_url(self) -> str:
        """DATABASE_URL, or an SQLite file under DATA_DIR."""
        return self.database_url or f"sqlite:///{self.data_dir / 'inference.sqlite3'}"

    @property
    def webhook_hosts(self) -> frozenset[str]:
        """WEBHOOK_ALLOWED_HOSTS as a set of lowercased host names and `*.` patterns."""
        return parse_allowed_hosts(self.webhook_allowed_hosts)

    @property
    def zip_limits(self) -> ZipSettings:
        """Limits that an uploaded zip must stay within (the MAX_ZIP_* fields this class inherits)."""
        return self


@lru_cache
def get_settings() -> Settings:
    """The settings of this process (read once)."""
    return Settings()  # type: ignore[call-arg]
