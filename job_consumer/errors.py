"""The consumer's deliberate exception types: a task outcome for the user versus a reason to retry later."""

from __future__ import annotations

__all__ = [
    "ConsumerError",
    "DiskFull",
    "DockerUnavailable",
    "GpuUnusable",
    "LeaseLost",
    "ModelFailed",
    "PrivateApiError",
    "RetryLater",
]


class ConsumerError(Exception):
    """Base of every error the consumer raises on purpose."""


class ModelFailed(ConsumerError):
    """The task ran (or could not start) and failed for a reason the user should read; it is not retried."""

    def __init__(self, reason: str, *, exit_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


class LeaseLost(ConsumerError):
    """The task was cancelled, deleted or taken by another consumer: stop and upload nothing."""


class RetryLater(ConsumerError):
    """A problem of the host, not of the model: the task is released (infrastructure=true) and runs again later."""


class PrivateApiError(RetryLater):
    """The private API could not be reached (for the whole retry window) or answered something unexpected."""


class DockerUnavailable(RetryLater):
    """The docker engine failed in a way that is not the model's fault (lost connection, runtime error)."""


class GpuUnusable(RetryLater):
    """The pinned GPU cannot be used (no NVIDIA runtime, driver error, wrong GPU_DEVICE)."""


class DiskFull(RetryLater):
    """WORK_DIR has too little free space (below MIN_FREE_DISK_BYTES, or ENOSPC while writing)."""
