"""Python SDK and command-line client for InferenceServer: post a zip or a folder, wait, fetch the output."""

from inference_client.client import InferenceClient, is_zip_path
from inference_client.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConnectionFailedError,
    ForbiddenError,
    InferenceServerError,
    InsufficientStorageError,
    InternalServerError,
    ModelNotFoundError,
    NotOfferedError,
    ServerBusyError,
    TaskFailedError,
    TaskNotFinishedError,
    TaskNotFoundError,
    TaskOutputMissingError,
    TaskWaitTimeoutError,
    ValidationError,
)
from inference_client.keys import ApiKey
from inference_client.results import AuditEntry, AuditPage, Model, TaskPage, TaskStatus

__all__ = [
    "ApiKey",
    "AuditEntry",
    "AuditPage",
    "AuthError",
    "BadRequestError",
    "ConflictError",
    "ConnectionFailedError",
    "ForbiddenError",
    "InferenceClient",
    "InferenceServerError",
    "InsufficientStorageError",
    "InternalServerError",
    "Model",
    "ModelNotFoundError",
    "NotOfferedError",
    "ServerBusyError",
    "TaskFailedError",
    "TaskNotFinishedError",
    "TaskNotFoundError",
    "TaskOutputMissingError",
    "TaskPage",
    "TaskStatus",
    "TaskWaitTimeoutError",
    "ValidationError",
    "is_zip_path",
]
