"""The whole sandbox policy for a model container, in one function."""

from __future__ import annotations

from typing import Any

from docker.types import DeviceRequest, LogConfig

from job_consumer.schemas import ModelInfo

__all__ = ["CONSUMER_LABEL", "MODEL_LABEL", "ROLE_LABEL", "TASK_LABEL", "model_container_kwargs", "task_labels"]

TASK_LABEL = "inference-server.task"
CONSUMER_LABEL = "inference-server.consumer"
MODEL_LABEL = "inference-server.model"
ROLE_LABEL = "inference-server.role"

DEFAULT_MEM_LIMIT = "4g"
DEFAULT_SHM_SIZE = "1g"


def task_labels(*, task_uid: str, consumer_id: str, role: str) -> dict[str, str]:
    """The labels every container and volume of a task carries, so cleanup can find them."""
    return {TASK_LABEL: task_uid, CONSUMER_LABEL: consumer_id, ROLE_LABEL: role}


def model_container_kwargs(
    *,
    model: ModelInfo,
    task_uid: str,
    consumer_id: str,
    input_volume: str,
    output_volume: str,
    model_volume: str | None,
    gpu_device: str | None,
    pids_limit: int,
    max_log_bytes: int,
) -> dict[str, Any]:
    """Keyword arguments for `containers.create` that run `model` locked down; ValueError for a GPU model sans GPU."""
    if model.use_gpu and not gpu_device:
        raise ValueError(f"model {model.human_readable_id!r} needs a GPU and this consumer has none")
    # Each source is a volume name, or a host folder (an absolute path) when the task's folders are bind-mounted.
    volumes = {
        input_volume: {"bind": "/input", "mode": "ro"},
        output_volume: {"bind": "/output", "mode": "rw"},
    }
    if model_volume:
        volumes[model_volume] = {"bind": "/model", "mode": "ro"}
    mem_limit = model.mem_limit or DEFAULT_MEM_LIMIT
    kwargs: dict[str, Any] = {
        "image": model.container_tag,
        "labels": task_labels(task_uid=task_uid, consumer_id=consumer_id, role="model"),
        "volumes": volumes,
        "network_mode": "bridge" if model.network else "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": pids_limit,
        "mem_limit": mem_limit,
        # Same as mem_limit: no swap on top, so the limit the user set is the limit that holds.
        "memswap_limit": mem_limit,
        "shm_size": model.shm_size or DEFAULT_SHM_SIZE,
        "init": True,
        "ipc_mode": "private",
        # The engine keeps a bounded log, so a chatty model cannot fill the host's disk.
        "log_config": LogConfig(
            type=LogConfig.types.JSON,
            config={"max-size": str(max(max_log_bytes, 1024 * 1024)), "max-file": "2"},
        ),
        "detach": True,
    }
    if model.cpus:
        kwargs["nano_cpus"] = int(model.cpus * 1_000_000_000)
    if model.use_gpu and gpu_device:
        kwargs["device_requests"] = [DeviceRequest(device_ids=[gpu_device], capabilities=[["gpu"]])]
    return kwargs
