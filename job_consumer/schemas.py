"""What the private API tells the consumer about a task and its model (the consumer's view of the contract)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Claim", "ModelInfo", "TaskInfo"]


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

    @property
    def content_key(self) -> str | None:
        """The per-host key of this model's static content (`<id>-<sha256[:16]>`), or None without a zip."""
        if not self.model_available or not self.zip_sha256:
            return None
        return f"{self.human_readable_id}-{self.zip_sha256[:16]}"


class TaskInfo(BaseModel):
    """Task status JSON, as far as the consumer needs it."""

    model_config = ConfigDict(extra="ignore")

    uid: str = Field(min_length=1)
    status: str
    attempt: int = 1
    input_size: int | None = None


class Claim(BaseModel):
    """A successful claim: the task (now `running`, attempt incremented) and its model."""

    model_config = ConfigDict(extra="ignore")

    task: TaskInfo
    model: ModelInfo
