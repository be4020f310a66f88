"""Parameter and answer shapes of the public calls, in one place: the private API checks them, the public API
documents them (and checks the query before it relays a call)."""

from __future__ import annotations

import re
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "DEFAULT_CPUS",
    "DEFAULT_MAX_OUTPUT_SIZE",
    "DEFAULT_MEM_LIMIT",
    "DEFAULT_SHM_SIZE",
    "DEFAULT_TIMEOUT",
    "FINAL_STATES",
    "HID_PATTERN",
    "LIMIT_FIELDS",
    "MAX_OFFSET",
    "MAX_PAGE",
    "MAX_TIMEOUT",
    "AuditOut",
    "AuditPage",
    "ErrorOut",
    "ModelIn",
    "ModelLimits",
    "ModelOut",
    "ModelPut",
    "ModelUpdate",
    "ModelVersionOut",
    "Paging",
    "ServiceInfo",
    "Size",
    "TaskFailedOut",
    "TaskOut",
    "TaskPage",
    "TaskQuery",
    "TaskStatus",
    "check_container_tag",
    "package_version",
    "size_in_bytes",
]

# Letters, digits and ._-, 1 to 128 of them, but not `.` or `..` (they name folders in a path).
HID_PATTERN = r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$"
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@]{0,511}$")
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# A user in the model container: a name or uid, optionally with a group (`1000:1000`, `nobody`).
_USER_PATTERN = r"^[A-Za-z0-9._-]{1,32}(:[A-Za-z0-9._-]{1,32})?$"

TaskStatus = Literal["pending", "running", "finished", "failed", "cancelled"]
FINAL_STATES = ("finished", "failed", "cancelled")

# Run limits a model gets when it does not ask for others.
DEFAULT_TIMEOUT = 3600
DEFAULT_MEM_LIMIT = "8g"
DEFAULT_SHM_SIZE = "1g"
DEFAULT_CPUS = 4.0
DEFAULT_MAX_OUTPUT_SIZE = "50g"
MAX_TIMEOUT = 24 * 3600  # RabbitMQ's consumer_timeout (compose: 48 h) must stay above this plus transfer time
# Paging bounds: an offset past any real table, yet one every database takes as an integer (not a 500).
MAX_PAGE = 500
MAX_OFFSET = 2**31 - 1


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


def _size(value: str) -> str:
    """A docker size string, normalised; ValueError when it is not one."""
    size_in_bytes(value)
    return value.strip().lower()


Size = Annotated[str, AfterValidator(_size)]


class ModelLimits(BaseModel):
    """The run limits of a model, with their defaults."""

    timeout: int = Field(default=DEFAULT_TIMEOUT, ge=1, le=MAX_TIMEOUT, description="seconds a task may run")
    mem_limit: Size = Field(default=DEFAULT_MEM_LIMIT, description="docker size string, e.g. 8g")
    shm_size: Size = Field(default=DEFAULT_SHM_SIZE, description="docker size string (PyTorch data loaders need it)")
    cpus: float = Field(default=DEFAULT_CPUS, gt=0, le=512, description="CPUs a task may use")
    network: bool = Field(default=False, description="give the container a network")
    max_output_size: Size = Field(default=DEFAULT_MAX_OUTPUT_SIZE, description="largest output zip, a docker size")
    user: str | None = Field(default=None, pattern=_USER_PATTERN, description="user[:group] the model runs as")


LIMIT_FIELDS = frozenset(ModelLimits.model_fields)


class ModelIn(ModelLimits):
    """The query of registering a model (`POST /api/models/`): its fields, and run limits with their defaults."""

    container_tag: str = Field(min_length=1, max_length=512, description="the docker image to run")
    human_readable_id: str = Field(pattern=HID_PATTERN, description="stable id: letters, digits, ._-")
    description: str = Field(default="", max_length=10_000, description="free text")
    model_available: bool | None = Field(default=None, description="true when a zip_file is sent")
    use_gpu: bool = Field(default=True, description="runs on GPU consumers (default true)")

    @field_validator("container_tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        return check_container_tag(value)

    def limits(self) -> ModelLimits:
        """Only the run limits."""
        return ModelLimits(**self.model_dump(include=set(LIMIT_FIELDS)))


class ModelPut(ModelLimits):
    """The query of `PUT /api/models/{human_readable_id}`: a new version with these fields, as posting it would.

    Fields left out get their defaults, as in POST. The zip stays unless a new zip_file is sent or
    model_available=false removes it.
    """

    container_tag: str = Field(min_length=1, max_length=512, description="the docker image to run")
    human_readable_id: str | None = Field(
        default=None, pattern=HID_PATTERN, description="optional; when given, the same as in the path"
    )
    description: str = Field(default="", max_length=10_000, description="free text")
    model_available: bool | None = Field(
        default=None, description="false removes the zip; true needs a zip_file or a stored zip"
    )
    use_gpu: bool = Field(default=True, description="runs on GPU consumers (default true)")

    @field_validator("container_tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        return check_container_tag(value)

    def fields(self) -> dict[str, object]:
        """The model's columns this version sets (the zip is decided apart)."""
        return self.model_dump(exclude={"human_readable_id", "model_available"})


class ModelUpdate(BaseModel):
    """The query of changing a model: only the fields given change."""

    container_tag: str | None = Field(default=None, min_length=1, max_length=512)
    description: str | None = Field(default=None, max_length=10_000)
    model_available: bool | None = None
    use_gpu: bool | None = None
    timeout: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT)
    mem_limit: Size | None = None
    shm_size: Size | None = None
    cpus: float | None = Field(default=None, gt=0, le=512)
    network: bool | None = None
    max_output_size: Size | None = None
    user: str | None = Field(default=None, pattern=_USER_PATTERN)

    @field_validator("container_tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        return None if value is None else check_container_tag(value)

    def changes(self) -> dict[str, object]:
        """The model's columns to change (model_available is not a column: the zip decides it)."""
        return self.model_dump(exclude_none=True, exclude={"model_available"})


class TaskQuery(BaseModel):
    """The query of `POST /api/tasks/`: the model, under its name or its alias."""

    human_readable_id: str | None = Field(default=None, pattern=HID_PATTERN, description="the model to run")
    model_human_readable_id: str | None = Field(
        default=None, pattern=HID_PATTERN, description="alias of human_readable_id"
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="POSTed the final status JSON, signed (hosts the server allows)"
    )


class Paging(BaseModel):
    """`limit` and `offset` of a listing; absurd values are a 422, never a database error."""

    limit: int = Field(default=50, ge=1, le=MAX_PAGE, description=f"items per page (at most {MAX_PAGE})")
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET, description="items to skip")


class ModelVersionOut(BaseModel):
    """One version of a model: its fields, its zip, and how many tasks run it."""

    version: int
    current: bool = Field(description="new tasks run this version")
    container_tag: str
    description: str
    use_gpu: bool
    model_available: bool
    zip_sha256: str | None
    zip_size: int | None
    zip_stored: bool | None = Field(
        default=None, description="the zip is still on disk (an old version's zip goes once no task needs it)"
    )
    timeout: int
    mem_limit: str
    shm_size: str
    cpus: float
    network: bool
    max_output_size: str = DEFAULT_MAX_OUTPUT_SIZE
    user: str | None = None
    created_at: datetime
    created_by: str | None = Field(default=None, description="the id of the API key that made it")
    tasks: int = Field(default=0, description="tasks that run or ran this version (not deleted ones)")
    active_tasks: int = Field(default=0, description="of those, the pending and running ones")


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
    max_output_size: str = DEFAULT_MAX_OUTPUT_SIZE
    user: str | None = None
    version: int = Field(default=1, description="the current version: new tasks run it")
    versions: list[ModelVersionOut] | None = Field(
        default=None, description="every version, newest first (GET of one model only)"
    )
    consumers: int = Field(default=0, description="live consumers reading this model's queue")
    warning: str | None = Field(default=None, description="e.g. no live consumer reads its queue")
    created_at: datetime
    updated_at: datetime


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
    consumer_name: str | None = None
    input_size: int
    output_size: int | None
    infra_retries: int = 0
    history: list[dict[str, Any]] = Field(default_factory=list, description="one entry per attempt that ended")
    waiting_for: str | None = Field(default=None, description="e.g. 'a GPU consumer' while none is live")
    owner: str | None = Field(default=None, description="the id of the API key that submitted it")
    model_version: int | None = Field(default=None, description="the model version it runs")
    phase: str | None = Field(default=None, description="queued, preparing, running or uploading")
    phase_started_at: datetime | None = None
    progress: float | None = Field(default=None, description="0..1, as the model last wrote it to $PROGRESS_FILE")
    progress_message: str | None = None
    provenance: dict[str, Any] | None = Field(default=None, description="what exactly produced the result")
    expires_at: datetime | None = Field(default=None, description="when the output zip is removed")
    callback_url: str | None = None
    webhook: dict[str, Any] | None = Field(default=None, description="how the delivery to callback_url stands")


class TaskPage(BaseModel):
    """One page of the task list."""

    items: list[TaskOut]
    total: int


class AuditOut(BaseModel):
    """One row of the audit trail: who (key id and name) did what to which target, and when."""

    id: int
    at: datetime
    key_id: str | None = Field(description="the API key that made the call (None: internal, or an open service)")
    key_name: str | None
    action: str = Field(description="key.create, key.revoke, key.rotate, model.create, model.update, ...")
    target: str = Field(description="the key id, model human_readable_id or task uid acted on")
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditPage(BaseModel):
    """One page of the audit trail, newest first."""

    items: list[AuditOut]
    total: int


class ErrorOut(BaseModel):
    """Every error answer: a message for people, sometimes with more fields."""

    model_config = ConfigDict(extra="allow")

    detail: str


class TaskFailedOut(ErrorOut):
    """552: why the task failed."""

    reason: str | None = None
    exit_code: int | None = None
    log_tail: str = ""


class ServiceInfo(BaseModel):
    """`GET /`: which service answers, its version, and where its documentation is."""

    name: str
    version: str
    docs: str = "/docs"


def package_version() -> str:
    """The installed version of the inference-server package."""
    try:
        return version("inference-server")
    except PackageNotFoundError:
        return "0+unknown"
