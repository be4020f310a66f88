"""What the docker engine's errors mean: the GPU's, the host's or the model's problem."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import docker.errors
import requests.exceptions

from job_consumer.errors import DockerUnavailable, ModelFailed, RetryLater

__all__ = ["EXEC_ERRORS", "engine_call", "exec_error", "gpu_error", "host_error"]

P = ParamSpec("P")
R = TypeVar("R")

# What the engine says when the GPU, its driver or the NVIDIA runtime cannot be used: the host's problem.
_GPU_ERRORS = ("could not select device driver", "nvidia", "cuda", "cdi device", "unknown or invalid runtime")


# What the engine says when the host, not the model, keeps a container from being made or started.
_HOST_ERRORS = (
    "no space left on device",
    "cgroup",
    "error mounting",
    "bind source path",
    "shim",
    "device or resource busy",
    "too many open files",
)


def host_error(message: str) -> bool:
    """True when an engine error is about the host (disk, cgroups, mounts, the runtime's shim)."""
    lowered = message.lower()
    return any(marker in lowered for marker in _HOST_ERRORS)


# What the runtime says when the image's entrypoint cannot be run: the model's problem, whatever the path names
# (NGC images start /opt/nvidia/nvidia_entrypoint.sh).
EXEC_ERRORS = ("executable file not found", "exec format error", "no such file or directory: unknown")


def gpu_error(message: str) -> bool:
    """True when an engine error is about the GPU or its runtime (not an entrypoint that happens to name it)."""
    if exec_error(message):
        return False
    return any(marker in message.lower() for marker in _GPU_ERRORS)


def engine_call(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: engine and transport failures become DockerUnavailable (the host's problem) with a message."""

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except (ModelFailed, RetryLater):
                raise
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise DockerUnavailable(f"docker failed while trying to {what}: {exc}") from exc

        return inner

    return wrap


def exec_error(message: str) -> bool:
    """True when the runtime could not run the image's entrypoint."""
    lowered = message.lower()
    return any(marker in lowered for marker in EXEC_ERRORS)
