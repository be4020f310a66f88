"""What the private API tells the consumer about a task and its model (the consumer's view of the contract)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Claim", "ClaimOutcome", "ClaimResult", "ModelInfo", "TaskInfo", "parse_size"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: str | int) -> int:
    """Bytes in a docker size string (`512m`, `50g`) or an int; ValueError for anything else."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class ModelInfo(BaseModel):
    """Model JSON: the image to run, its optional static content and its run limits."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    id: int | str
    human_readable_id: str = Field(min_length=1)
    container_tag: str = Field(min_length=1)
    use_gpu: bool = True
    model_available: bool = False
    zip_sha256: str | None = None
    zip_size: int | None = None
    timeout: float = Field(default=3600, gt=0)
    mem_limit: str | None = None
    shm_size: str | None = None
    cpus: float | None = Field(default=None, gt=0)
    network: bool = False
    # Newer private APIs send these (migration 0002); older ones do not, so both are optional.
    user: str | None = None
    max_output_size: str | int | None = None

    @property
    def content_key(self) -> str | None:
        """The per-host key of this model's static content (`<id>-<sha256[:16]>`), or None without a zip."""
        if not self.model_available or not self.zip_sha256:
            return None
        return f"{self.human_readable_id}-{self.zip_sha256[:16]}"

    @property
    def max_output_bytes(self) -> int | None:
        """max_output_size in bytes, or None when the private API sets no limit."""
        if self.max_output_size in (None, ""):
            return None
        assert self.max_output_size is not None
        return parse_size(self.max_output_size)


class TaskInfo(BaseModel):
    """Task status JSON, as far as the consumer needs it."""

    model_config = ConfigDict(extra="ignore")

    uid: str = Field(min_length=1)
    status: str
    attempt: int = 1
    input_size: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None


class Claim(BaseModel):
    """A successful claim: the task (now `running`, attempt incremented) and its model."""

    model_config = ConfigDict(extra="ignore")

    task: TaskInfo
    model: ModelInfo


class ClaimOutcome(enum.Enum):
    """What to do with a queue message after trying to claim its task."""

    RUN = "run"
    SKIP = "skip"  # final, unknown, running elsewhere or not due yet: acknowledge and drop the message


@dataclass(frozen=True)
class ClaimResult:
    """A claim's outcome; `claim` is set only for RUN."""

    outcome: ClaimOutcome
    claim: Claim | None = None
    status: str | None = None
    detail: str = ""
