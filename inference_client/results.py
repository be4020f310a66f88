"""Typed results of the SDK: models, task status, task pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FINAL_STATES", "AuditEntry", "AuditPage", "Model", "TaskPage", "TaskState", "TaskStatus"]

TaskState = Literal["pending", "running", "finished", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"finished", "failed", "cancelled"})


class _Result(BaseModel):
    """Fields the server adds later are kept (`extra`) rather than refused."""

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())


class Model(_Result):
    """A registered model, as the server describes it."""

    human_readable_id: str
    container_tag: str
    id: int | str | None = None
    description: str | None = None
    use_gpu: bool = True
    model_available: bool = False
    zip_sha256: str | None = None
    zip_size: int | None = None
    timeout: int | None = None
    mem_limit: str | None = None
    shm_size: str | None = None
    cpus: float | None = None
    network: bool = False
    max_output_size: str | None = None
    user: str | None = None
    version: int | None = None
    versions: list[dict[str, Any]] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class TaskStatus(_Result):
    """Where a task stands."""

    uid: str
    status: TaskState
    model: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = None
    attempt: int | None = None
    exit_code: int | None = None
    error: str | None = None
    consumer_id: str | None = None
    input_size: int | None = None
    output_size: int | None = None
    expires_at: datetime | None = None
    # What runs and how far (servers before these fields leave them None).
    phase: str | None = None
    phase_started_at: datetime | None = None
    progress: float | None = None
    progress_message: str | None = None

    @property
    def is_final(self) -> bool:
        """True once the task will not change any more (finished, failed or cancelled)."""
        return self.status in FINAL_STATES


class TaskPage(_Result):
    """One page of a task listing."""

    items: list[TaskStatus]
    total: int


class AuditEntry(_Result):
    """One row of the audit trail: who (key id and name) did what to which target, and when."""

    id: int
    at: datetime
    action: str
    target: str
    key_id: str | None = None
    key_name: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditPage(_Result):
    """One page of the audit trail, newest first."""

    items: list[AuditEntry]
    total: int
