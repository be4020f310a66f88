"""The consumer's deliberate exception types: a task outcome for the user versus a reason to retry later."""

from __future__ import annotations

__all__ = [
    "ConsumerError",
    "DockerUnavailable",
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
    """An infrastructure problem (not the model's fault): release the task and requeue it."""


class PrivateApiError(RetryLater):
    """The private API could not be reached or answered something unexpected."""


class DockerUnavailable(RetryLater):
    """The docker engine failed in a way that is not the model's fault."""
