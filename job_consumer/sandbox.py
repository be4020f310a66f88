"""The whole sandbox policy for a model container (and the GPU probe), in one place."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from job_consumer.schemas import ModelInfo

__all__ = [
    "ATTEMPT_LABEL",
    "CONSUMER_LABEL",
    "DEADLINE_LABEL",
    "DEFAULT_PROGRESS_FILE",
    "DEFAULT_USER",
    "INSTANCE_LABEL",
    "MODEL_ID_LABEL",
    "MODEL_LABEL",
    "ROLE_LABEL",
    "SCOPE_LABEL",
    "TASK_LABEL",
    "Sandbox",
    "TaskRef",
    "gpu_probe_kwargs",
    "model_container_kwargs",
    "output_relative",
    "scope_of",
]

TASK_LABEL = "inference-server.task"
INSTANCE_LABEL = "inference-server.instance"
CONSUMER_LABEL = "inference-server.consumer"
ATTEMPT_LABEL = "inference-server.attempt"
DEADLINE_LABEL = "inference-server.deadline"
SCOPE_LABEL = "inference-server.scope"
MODEL_LABEL = "inference-server.model"
MODEL_ID_LABEL = "inference-server.model-id"
ROLE_LABEL = "inference-server.role"

DEFAULT_MEM_LIMIT = "4g"
DEFAULT_SHM_SIZE = "1g"
# nobody:nogroup. A model whose image needs root sets the model's `user` (e.g. "0:0").
DEFAULT_USER = "65534:65534"
# Where a model may write how far it is (`0.42 message`); the consumer reads it from the /output mount.
DEFAULT_PROGRESS_FILE = "/output/.progress"
NOFILE = 8192


def output_relative(progress_file: str) -> PurePosixPath:
    """PROGRESS_FILE's path inside /output; ValueError unless it names a file under /output."""
    path = PurePosixPath(progress_file)
    if not path.is_absolute() or ".." in path.parts or len(path.parts) < 3 or path.parts[1] != "output":
        raise ValueError(f"PROGRESS_FILE must name a file under /output, not {progress_file!r}")
    return path.relative_to("/output")


def scope_of(private_api_url: str, deployment: str = "") -> str:
    """The label value that tells one deployment's containers from another's on a shared engine.

    Compose projects on one engine share the PRIVATE_API_URL `http://private-api:7000`, so compose adds its project
    name (DEPLOYMENT_NAME); without one the scope is sha256(PRIVATE_API_URL)[:12].
    """
    key = private_api_url if not deployment else f"{private_api_url}\n{deployment}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TaskRef:
    """Who runs which attempt of which task, until when: what every container of the task is labelled with."""

    uid: str
    attempt: int
    instance_id: str
    consumer_name: str
    scope: str
    deadline: int  # unix epoch seconds after which the container is an orphan whatever its lease says

    def labels(self, role: str) -> dict[str, str]:
        """The labels by which cleanup and the orphan reaper find the task's containers."""
        return {
            TASK_LABEL: self.uid,
            INSTANCE_LABEL: self.instance_id,
            CONSUMER_LABEL: self.consumer_name,
            ATTEMPT_LABEL: str(self.attempt),
            DEADLINE_LABEL: str(self.deadline),
            SCOPE_LABEL: self.scope,
            ROLE_LABEL: role,
        }

    def task_filters(self) -> tuple[str, str]:
        """Label filters matching every container of this task in this deployment, of any run."""
        return f"{TASK_LABEL}={self.uid}", f"{SCOPE_LABEL}={self.scope}"

    def is_other_run(self, labels: dict[str, str]) -> bool:
        """True for a container of this task that another instance or attempt started."""
        return (labels.get(INSTANCE_LABEL), labels.get(ATTEMPT_LABEL)) != (self.instance_id, str(self.attempt))


@dataclass(frozen=True)
class Sandbox:
    """The consumer-wide parts of the policy (from its settings)."""

    gpu_device: str | None
    pids_limit: int = 4096
    max_log_bytes: int = 1024 * 1024
    tmp_size: str = "1g"
    default_user: str = DEFAULT_USER
    progress_file: str = DEFAULT_PROGRESS_FILE


def _gpu_access(use_gpu: bool, gpu_device: str | None) -> dict[str, Any]:
    """Exactly the pinned GPU for a GPU task; none at all for a CPU task, whatever the image's environment says."""
    if not use_gpu:
        # Images such as PyTorch's set NVIDIA_VISIBLE_DEVICES=all, which nvidia as default runtime would honour.
        return {"environment": {"NVIDIA_VISIBLE_DEVICES": "void"}}
    assert gpu_device is not None
    return {
        "environment": {"NVIDIA_VISIBLE_DEVICES": gpu_device},
        "device_requests": [DeviceRequest(device_ids=[gpu_device], capabilities=[["gpu"]])],
    }


def model_container_kwargs(
    *,
    model: ModelInfo,
    task: TaskRef,
    input_dir: Path,
    output_dir: Path,
    model_dir: Path | None,
    sandbox: Sandbox,
) -> dict[str, Any]:
    """Keyword arguments for `containers.create` that run `model` locked down; ValueError for a GPU model sans GPU.

    /input and /model are read-only bind mounts of folders under WORK_DIR, /output a writable one: the engine copies
    nothing from the image into them, and whatever the image holds at those paths is hidden, never collected.
    """
    if model.use_gpu and not sandbox.gpu_device:
        raise ValueError(f"model {model.human_readable_id!r} needs a GPU and this consumer has none")
    mounts = [
        Mount(target="/input", source=str(input_dir), type="bind", read_only=True),
        Mount(target="/output", source=str(output_dir), type="bind", read_only=False),
    ]
    if model_dir is not None:
        mounts.append(Mount(target="/model", source=str(model_dir), type="bind", read_only=True))
    mem_limit = model.mem_limit or DEFAULT_MEM_LIMIT
    labels = task.labels("model")
    if model.content_key:
        labels[MODEL_LABEL] = model.content_key
    kwargs: dict[str, Any] = {
        "image": model.container_tag,
        "labels": labels,
        "mounts": mounts,
        "user": model.user or sandbox.default_user,
        "network_mode": "bridge" if model.network else "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": sandbox.pids_limit,
        "mem_limit": mem_limit,
        # Same as mem_limit: no swap on top, so the limit the user set is the limit that holds.
        "memswap_limit": mem_limit,
        "shm_size": model.shm_size or DEFAULT_SHM_SIZE,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={sandbox.tmp_size},mode=1777"},
        "ulimits": [Ulimit(name="core", soft=0, hard=0), Ulimit(name="nofile", soft=NOFILE, hard=NOFILE)],
        "init": True,
        "ipc_mode": "private",
        # The engine keeps a bounded log, so a chatty model cannot fill the host's disk.
        "log_config": LogConfig(
            type=LogConfig.types.JSON,
            config={"max-size": str(max(sandbox.max_log_bytes, 1024 * 1024)), "max-file": "2"},
        ),
        "detach": True,
        **_gpu_access(model.use_gpu, sandbox.gpu_device),
    }
    kwargs["environment"] = {**kwargs["environment"], "PROGRESS_FILE": sandbox.progress_file}
    if not model.user:
        # nobody's home does not exist: libraries that cache under ~ (torch, matplotlib) write to the /tmp tmpfs.
        kwargs["environment"] = {**kwargs["environment"], "HOME": "/tmp"}
    if model.cpus:
        kwargs["nano_cpus"] = int(model.cpus * 1_000_000_000)
    return kwargs


def gpu_probe_kwargs(
    *, image: str, gpu_device: str, labels: dict[str, str], command: list[str] | None = None, utility: bool = False
) -> dict[str, Any]:
    """A throw-away container asking for exactly the pinned GPU and running `true` (or command): it starts only if
    the GPU can. `utility` also asks for the driver's tools (nvidia-smi)."""
    access = _gpu_access(True, gpu_device)
    if utility:
        access["environment"]["NVIDIA_DRIVER_CAPABILITIES"] = "utility"
        access["device_requests"] = [DeviceRequest(device_ids=[gpu_device], capabilities=[["gpu", "utility"]])]
    return {
        "image": image,
        "command": command or ["true"],
        "entrypoint": [],
        "labels": {**labels, ROLE_LABEL: "gpu-probe"},
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "user": DEFAULT_USER,
        "detach": True,
        **access,
    }
