"""Shapes of the consumer calls; the public calls' shapes are in common/schemas.py (one place for both APIs)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from common.schemas import ModelOut, TaskOut

ConsumerId = Annotated[str, Field(min_length=1, max_length=256)]
MAX_PROGRESS_MESSAGE = 256  # what the tasks table holds; longer messages are cut, not refused
MAX_PROVENANCE_BYTES = 64 * 1024


class ClaimIn(BaseModel):
    """A consumer instance asks to run a task."""

    consumer_id: ConsumerId
    consumer_name: str | None = Field(default=None, max_length=256)


class ClaimOut(BaseModel):
    """What a consumer needs to run a claimed task."""

    task: TaskOut
    model: ModelOut  # the fields of the version the task runs (model.version), its zip included
    # The zip sha256s of this model's versions that the current version or pending and running tasks need: the
    # consumer keeps their content on its host and may remove the rest.
    model_zips_needed: list[str] = Field(default_factory=list)


class HolderIn(BaseModel):
    """Who holds a task: the consumer instance and the attempt it claimed."""

    consumer_id: ConsumerId
    attempt: int = Field(ge=1)


class HeartbeatIn(HolderIn):
    """The holder renews its lease and says which phase the task is in and how far the model says it is."""

    phase: Literal["preparing", "running", "uploading"] | None = None
    progress: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    progress_message: str | None = Field(default=None, max_length=10_000)

    @field_validator("progress_message")
    @classmethod
    def _bounded(cls, value: str | None) -> str | None:
        """A long message is cut to what the status keeps (a model's chatter must not fail the heartbeat)."""
        if value is None or len(value) <= MAX_PROGRESS_MESSAGE:
            return value
        return value[: MAX_PROGRESS_MESSAGE - 1] + "…"


class FinishIn(HolderIn):
    """A consumer reports a task's final state and what exactly produced it."""

    status: Literal["finished", "failed"]
    reason: str | None = Field(default=None, max_length=10_000)
    exit_code: int | None = None
    provenance: dict[str, Any] | None = None

    @field_validator("provenance")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Provenance is a few hundred bytes; anything past MAX_PROVENANCE_BYTES is refused."""
        if value is not None and len(json.dumps(value)) > MAX_PROVENANCE_BYTES:
            raise ValueError(f"provenance is larger than {MAX_PROVENANCE_BYTES} bytes")
        return value


class ReleaseIn(HolderIn):
    """A consumer gives a task back; `infrastructure` when the host, not the model, is the reason."""

    reason: str = Field(default="consumer shut down", max_length=1000)
    infrastructure: bool = False


class LeaseIn(BaseModel):
    """One lease a consumer asks about."""

    uid: str = Field(min_length=1, max_length=64)
    consumer_id: ConsumerId
    attempt: int


class LeasesCheckIn(BaseModel):
    """The leases of the containers a consumer found on its engine."""

    leases: list[LeaseIn] = Field(max_length=10_000)


class LeasesCheckOut(BaseModel):
    """For each lease asked about, in the same order: is it live?"""

    live: list[bool]


class ConsumerHeartbeatIn(BaseModel):
    """A consumer instance says it is alive, what it reads and whether its GPU works."""

    name: str = Field(min_length=1, max_length=256)
    host: str = Field(default="", max_length=256)
    queues: list[str] = Field(default_factory=list, max_length=16)
    gpu_device: str | None = Field(default=None, max_length=128)
    gpu_usable: bool | None = None
    gpu_reason: str | None = Field(default=None, max_length=10_000)
    free_disk_bytes: int | None = None


class ConsumerOut(BaseModel):
    """A consumer instance as /healthz shows it."""

    instance_id: str
    name: str
    host: str
    queues: list[str]
    gpu_device: str | None
    gpu_usable: bool | None
    gpu_reason: str | None
    free_disk_bytes: int | None
    started_at: datetime
    last_seen: datetime
    live: bool
