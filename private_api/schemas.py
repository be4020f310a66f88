"""Request and response shapes, and the validation of model fields."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Letters, digits and ._-, 1 to 128 of them, but not `.` or `..` (they name folders in a path).
HID_PATTERN = r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$"
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@]{0,511}$")
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

TaskStatus = Literal["pending", "running", "finished", "failed", "cancelled"]
FINAL_STATES = ("finished", "failed", "cancelled")

# Run limits a model gets when it does not ask for others.
DEFAULT_TIMEOUT = 3600
DEFAULT_MEM_LIMIT = "8g"
DEFAULT_SHM_SIZE = "1g"
DEFAULT_CPUS = 4.0
MAX_TIMEOUT = 24 * 3600  # RabbitMQ's consumer_timeout (compose: 48 h) must stay above this plus transfer time


def size_in_bytes(value: str) -> int:
    """Bytes in a docker size string such as 512m or 4g; ValueError when it is not one."""
    match = _SIZE_RE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"not a size such as 512m or 4g: {value!r}")
    number = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if number < 4 * 1024**2:
        raise ValueError(f"{value!r} is less than the smallest allowed size, 4m")
    return int(number)


def check_container_tag(value: str) -> str:
    """A docker image reference, or ValueError."""
    if not _TAG_RE.fullmatch(value):
        raise ValueError(f"not a docker image reference: {value!r}")
    return value


class ModelLimits(BaseModel):
    """The run limits of a model, as query fields."""

    timeout: int = Field(default=DEFAULT_TIMEOUT, ge=1, le=MAX_TIMEOUT)
    mem_limit: str = DEFAULT_MEM_LIMIT
    shm_size: str = DEFAULT_SHM_SIZE
    cpus: float = Field(default=DEFAULT_CPUS, gt=0, le=512)
    network: bool = False

    @field_validator("mem_limit", "shm_size")
    @classmethod
    def _size(cls, value: str) -> str:
        size_in_bytes(value)
        return value.strip().lower()


class ModelOut(BaseModel):
    """A model as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    human_readable_id: str
    container_tag: str
    description: str
    use_gpu: bool
    model_available: bool
    zip_sha256: str | None
    zip_size: int | None
    timeout: int
    mem_limit: str
    shm_size: str
    cpus: float
    network: bool
    max_output_size: str
    user: str | None
    created_at: datetime
    updated_at: datetime
    consumers: int = 0
    warning: str | None = None


class TaskOut(BaseModel):
    """A task's status as the API shows it."""

    uid: str
    model: str
    status: TaskStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None
    attempt: int
    exit_code: int | None
    error: str | None
    consumer_id: str | None
    input_size: int
    output_size: int | None
    consumer_name: str | None = None
    waiting_for: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    infra_retries: int = 0


class TaskPage(BaseModel):
    """One page of the task list."""

    items: list[TaskOut]
    total: int


ConsumerId = Annotated[str, Field(min_length=1, max_length=256)]


class ClaimIn(BaseModel):
    """A consumer instance asks to run a task."""

    consumer_id: ConsumerId
    consumer_name: str | None = Field(default=None, max_length=256)


class ClaimOut(BaseModel):
    """What a consumer needs to run a claimed task."""

    task: TaskOut
    model: ModelOut


class HolderIn(BaseModel):
    """Who holds a task: the consumer instance and the attempt it claimed."""

    consumer_id: ConsumerId
    attempt: int = Field(ge=1)


class FinishIn(HolderIn):
    """A consumer reports a task's final state."""

    status: Literal["finished", "failed"]
    reason: str | None = Field(default=None, max_length=10_000)
    exit_code: int | None = None


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


class ModelIn(ModelLimits):
    """The query fields of registering a model."""

    container_tag: str = Field(min_length=1, max_length=512)
    human_readable_id: str = Field(pattern=HID_PATTERN, description="stable id: letters, digits, ._-")
    description: str = Field(default="", max_length=10_000)
    model_available: bool | None = None
    use_gpu: bool = True

    @field_validator("container_tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        return check_container_tag(value)

    def limits(self) -> ModelLimits:
        """Only the run limits."""
        return ModelLimits(**self.model_dump(include=set(ModelLimits.model_fields)))


class ModelUpdate(BaseModel):
    """The query fields of changing a model: only those given change."""

    container_tag: str | None = Field(default=None, min_length=1, max_length=512)
    description: str | None = Field(default=None, max_length=10_000)
    model_available: bool | None = None
    use_gpu: bool | None = None
    timeout: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT)
    mem_limit: str | None = None
    shm_size: str | None = None
    cpus: float | None = Field(default=None, gt=0, le=512)
    network: bool | None = None

    @field_validator("container_tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        return None if value is None else check_container_tag(value)

    @field_validator("mem_limit", "shm_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        return None if value is None else ModelLimits._size(value)

    def changes(self) -> dict[str, object]:
        """The model's columns to change (model_available is not a column: the zip decides it)."""
        return self.model_dump(exclude_none=True, exclude={"model_available"})
