"""Database tables: models and their versions, tasks, consumers, API keys, audit, idempotency keys.

The tasks table is also the publishing outbox (`published_at`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Base class of the tables."""


class Model(Base):
    """A registered docker image with its run limits and optional model zip."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    human_readable_id: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    container_tag: Mapped[str] = mapped_column(String(512))
    description: Mapped[str] = mapped_column(Text, default="")
    use_gpu: Mapped[bool] = mapped_column(Boolean, default=True)
    zip_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    zip_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    timeout: Mapped[int] = mapped_column(Integer)
    mem_limit: Mapped[str] = mapped_column(String(32))
    shm_size: Mapped[str] = mapped_column(String(32))
    cpus: Mapped[float] = mapped_column(Float)
    network: Mapped[bool] = mapped_column(Boolean, default=False)
    # Docker size string; the consumer stops reading the output past it and fails the task.
    max_output_size: Mapped[str] = mapped_column(String(32), default="50g")
    # `uid[:gid]` the model runs as; None means the consumer's non-root default.
    user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The current version (a row of model_versions); new tasks run it.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def model_available(self) -> bool:
        """True when a model zip is stored."""
        return self.zip_sha256 is not None


class Task(Base):
    """One input zip for one model, and everything known about its run."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_status_id", "status", "id"),
        Index("ix_tasks_unpublished", "published_at", "status"),
        Index("ix_tasks_owner_id", "owner", "id"),
        Index("ix_tasks_owner_status", "owner", "status"),
        # The retention sweeper's lookups of due tasks (0004_retention).
        Index("ix_tasks_input_due", "input_removed_at", "finished_at"),
        Index("ix_tasks_output_due", "output_expired_at", "finished_at"),
        Index("ix_tasks_owner_started", "owner", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True, index=True
    )
    model_hid: Mapped[str] = mapped_column(String(128))
    use_gpu: Mapped[bool] = mapped_column(Boolean)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    consumer_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    input_size: Mapped[int] = mapped_column(BigInteger, default=0)
    input_sha256: Mapped[str] = mapped_column(String(64), default="")
    output_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The readable CONSUMER_ID of the holder; `consumer_id` is the holder's unique instance id.
    consumer_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # Releases for reasons of the host (GPU, disk, registry, engine): they give the attempt back, and are bounded.
    infra_retries: Mapped[int] = mapped_column(Integer, default=0)
    # Not to be published or claimed before this (backoff after an infrastructure release).
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # JSON list of what happened to earlier attempts: {"attempt", "consumer", "reason", "infrastructure", "at"}.
    history: Mapped[str] = mapped_column(Text, default="[]")
    # The uid of the task whose queue message this attempt was claimed with (fair order may hand out another).
    claimed_for: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The model version current when the task was submitted (None for tasks older than versions).
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What the holder does now (preparing, running, uploading), since when, and how far the model says it is.
    phase: Mapped[str | None] = mapped_column(String(16), nullable=True)
    phase_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_message: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # JSON object: what exactly produced the result (image id, digests, shas, consumer, GPU, limits, timings).
    provenance: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Retention: when the input zip was removed, and when the output zip was removed as expired.
    input_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    output_expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Webhook: where the final status is POSTed, and how its delivery stands.
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    webhook_last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Consumer(Base):
    """A running job consumer instance, as last reported by its own heartbeat."""

    __tablename__ = "consumers"

    instance_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    host: Mapped[str] = mapped_column(String(256), default="")
    # JSON list of the queue names it reads now (a GPU consumer whose GPU is unusable reads only the CPU queue).
    queues: Mapped[str] = mapped_column(Text, default="[]")
    gpu_device: Mapped[str | None] = mapped_column(String(128), nullable=True)
    gpu_usable: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    gpu_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    free_disk_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ModelVersion(Base):
    """One version of a model: what a task submitted while it was current runs, whatever changes later."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    container_tag: Mapped[str] = mapped_column(String(512))
    description: Mapped[str] = mapped_column(Text, default="")
    use_gpu: Mapped[bool] = mapped_column(Boolean, default=True)
    timeout: Mapped[int] = mapped_column(Integer)
    mem_limit: Mapped[str] = mapped_column(String(32))
    shm_size: Mapped[str] = mapped_column(String(32))
    cpus: Mapped[float] = mapped_column(Float)
    network: Mapped[bool] = mapped_column(Boolean, default=False)
    max_output_size: Mapped[str] = mapped_column(String(32), default="50g")
    user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    zip_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    zip_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The key id that made it (None: an internal call or an open service).
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ApiKey(Base):
    """An API key: only the sha256 of its secret is stored; its id is the owner of the tasks made with it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Quotas: None means KEY_MAX_QUEUED_TASKS pending, and no limit on running tasks.
    max_queued_tasks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_running_tasks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class AuditEntry(Base):
    """Who changed what, when: appended to, never changed."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    key_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    key_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256))
    # JSON object with what else matters (fields changed, version made, tasks cancelled...).
    detail: Mapped[str] = mapped_column(Text, default="{}")


class IdempotencyKey(Base):
    """An `Idempotency-Key` a caller sent with a submission, and the task it made (kept 24 h)."""

    __tablename__ = "idempotency"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_owner_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The task owner ("" while the service is open: every caller is the same owner then).
    owner: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(256))
    task_uid: Mapped[str] = mapped_column(String(64))
    model_hid: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
