"""Database tables: models, tasks and consumers. The tasks table is also the publishing outbox (`published_at`)."""

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
