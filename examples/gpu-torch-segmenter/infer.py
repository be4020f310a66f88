"""Segment every 3D volume under /input with the PyTorch weights in /model; GPU when there is one, else CPU.

/model (the model's zip, mounted read-only) holds `weights.pt` (a state dict) and `config.json`
(`features`, `mean`, `std`, `probability`). For every `/input/**/*.nii.gz`, `*.nii` or `*.npy` it writes
`/output/<same path>_seg.<same format>` (uint8 labels; NIfTI keeps the affine) and one `/output/summary.json`.

A volume goes through the network in slabs along its first axis (`SLAB` slices, with the few slices of context
the convolutions need), so a large CT fits in GPU memory; a CUDA out-of-memory error halves the slab and retries.
Slabs are prepared by `WORKERS` data loader processes, which hand them over through shared memory (/dev/shm): the
model must be registered with a `shm_size` that holds a few slabs (see README).

Environment: INPUT_DIR, OUTPUT_DIR, MODEL_DIR (default /input, /output, /model); DEVICE (`cuda`, `cpu`;
default: cuda when available); SLAB (default 32); WORKERS (data loader processes, default 2; 0 prepares slabs in
the main process and needs no shared memory).
Exit codes: 0 done; 2 no volume in the input; 3 some volumes could not be read; 4 the weights or config in /model
are missing or do not fit the network; 135 /dev/shm is too small for the data loader workers (the code a bus
error gives, which the server reports as "raise the model's shm_size").
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nibabel.filebasedimages import ImageFileError
from segmenter import CONV3_LAYERS, build
from torch.utils.data import DataLoader, Dataset

EXIT_OK, EXIT_NO_INPUT, EXIT_SOME_FAILED, EXIT_BAD_MODEL = 0, 2, 3, 4
EXIT_SHM_TOO_SMALL = 135  # 128 + SIGBUS: what a data loader worker dies of when /dev/shm is full
SUFFIXES = (".nii.gz", ".nii", ".npy")
READ_ERRORS = (ValueError, OSError, EOFError, zlib.error, ImageFileError)
PREFETCH = 2  # slabs each worker prepares ahead: what /dev/shm must hold, with some room to spare
# A worker that cannot put a slab into /dev/shm may leave the loader waiting forever: give up after this long.
LOADER_TIMEOUT_SECONDS = 300
# How PyTorch says that shared memory ran out: a worker killed by SIGBUS, or an allocation in /dev/shm refused.
SHM_SIGNS = ("bus error", "shared memory", "shm", "no space left on device")


class ModelError(Exception):
    """The model content in /model is missing or unusable."""


class ShmTooSmall(Exception):
    """The data loader workers could not hand slabs over: /dev/shm is too small."""


class Slabs(Dataset[tuple[torch.Tensor, int, int, int]]):
    """A volume's slabs, normalised, each with the context slices the convolutions need (read in the workers)."""

    def __init__(self, volume: np.ndarray, slab: int, mean: float, std: float) -> None:
        self.volume, self.slab, self.mean, self.std = volume, slab, mean, std

    def __len__(self) -> int:
        return -(-self.volume.shape[0] // self.slab)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        """(block, start, stop, lo): block holds slices lo..stop+halo, of which start..stop are this slab's."""
        depth = self.volume.shape[0]
        start = index * self.slab
        stop = min(start + self.slab, depth)
        lo, hi = max(0, start - CONV3_LAYERS), min(depth, stop + CONV3_LAYERS)
        block = (np.asarray(self.volume[lo:hi], dtype=np.float32) - self.mean) / self.std
        return torch.from_numpy(block), start, stop, lo


def shm_megabytes(free: bool = False) -> float:
    """Size (or free space) of /dev/shm in MB (0 when there is none)."""
    try:
        usage = shutil.disk_usage("/dev/shm")
    except OSError:
        return 0.0
    return (usage.free if free else usage.total) / 1e6


def check_shm(volume: np.ndarray, slab: int, workers: int) -> None:
    """ShmTooSmall unless /dev/shm holds the slabs the workers prepare ahead (checked before they start)."""
    if not workers:
        return
    block = (slab + 2 * CONV3_LAYERS) * int(np.prod(volume.shape[1:])) * 4  # float32
    needed = workers * PREFETCH * block * 1.5 / 1e6
    free = shm_megabytes(free=True)
    if free < needed:
        raise ShmTooSmall(
            f"{workers} workers need about {needed:.0f} MB of /dev/shm for slabs of {block / 1e6:.1f} MB; "
            f"{free:.0f} MB free"
        )


def log(message: str) -> None:
    """Log to stdout; the server keeps the tail for the task's logs."""
    print(f"[segmenter] {message}", flush=True)


def pick_device() -> torch.device:
    """DEVICE if set, else the first GPU when CUDA works, else the CPU."""
    wanted = os.environ.get("DEVICE")
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"DEVICE={wanted} but CUDA is not available in this container")
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(model_dir: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network with its weights, on the device, in eval mode."""
    config_file, weights_file = model_dir / "config.json", model_dir / "weights.pt"
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise ModelError(f"{needed} is missing: register the model with its model.zip (see README)")
    try:
        config = json.loads(config_file.read_text())
        net = build(config)
        # weights_only: a model zip must not be able to run code through pickle.
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise ModelError(f"cannot load the model from {model_dir}: {exc}") from exc
    return net.to(device).eval(), config


def segment(
    net: torch.nn.Module, volume: np.ndarray, config: dict[str, Any], device: torch.device, slab: int, workers: int
) -> np.ndarray:
    """Labels (uint8) for one volume, computed slab by slab with enough context that slabs join seamlessly."""
    mean, std = float(config.get("mean", 0.0)), float(config.get("std", 1.0))
    probability = float(config.get("probability", 0.5))
    cut = float(np.log(probability / (1 - probability)))  # compare logits: no sigmoid over the whole volume
    labels = np.zeros(volume.shape, dtype=np.uint8)
    while True:
        check_shm(volume, slab, workers)
        loader = DataLoader(
            Slabs(volume, slab, mean, std),
            batch_size=None,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            timeout=LOADER_TIMEOUT_SECONDS if workers else 0,
            **({"prefetch_factor": PREFETCH} if workers else {}),
        )
        try:
            with torch.inference_mode():
                for block, start, stop, lo in loader:
                    logits = net(block[None, None].to(device))[0, 0, start - lo : stop - lo]
                    labels[start:stop] = (logits > cut).to("cpu", torch.uint8).numpy()
            return labels
        except torch.cuda.OutOfMemoryError:
            if slab == 1:
                raise
            slab = max(1, slab // 2)
            torch.cuda.empty_cache()
            log(f"CUDA out of memory; slab reduced to {slab} slices")
        except RuntimeError as exc:
            timed_out = "timed out" in str(exc) and shm_megabytes(free=True) < 0.1 * shm_megabytes()
            if workers and (timed_out or any(sign in str(exc).lower() for sign in SHM_SIGNS)):
                raise ShmTooSmall(str(exc).splitlines()[0]) from exc
            raise


def volume_name(path: Path) -> tuple[str, str] | None:
    """(stem, suffix) of a volume file this model reads, or None for any other file."""
    for suffix in SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)], suffix
    return None


def load_volume(path: Path) -> tuple[np.ndarray, Any]:
    """The volume (memory-mapped where the format allows) and, for NIfTI, its image (for the affine)."""
    if path.name.endswith(".npy"):
        return np.load(path, mmap_mode="r", allow_pickle=False), None
    image = nib.load(path)
    if not isinstance(image, nib.Nifti1Image):  # NIfTI-2 images are NIfTI-1 images too
        raise ValueError(f"expected a NIfTI image, got {type(image).__name__}")
    return np.asanyarray(image.dataobj), image


def save_labels(target: Path, labels: np.ndarray, image: Any) -> None:
    """Write the labels in the input's format (NIfTI with the input's affine)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if image is None:
        np.save(target, labels)
        return
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    nib.save(type(image)(labels, image.affine, header), target)


def main() -> int:
    """Segment every volume; returns the exit code."""
    input_dir = Path(os.environ.get("INPUT_DIR", "/input"))
    output_dir = Path(os.environ.get("OUTPUT_DIR", "/output"))
    model_dir = Path(os.environ.get("MODEL_DIR", "/model"))
    slab = int(os.environ.get("SLAB", "32"))
    workers = int(os.environ.get("WORKERS", "2"))
    try:
        if slab < 1 or workers < 0:
            raise ModelError(f"SLAB must be at least 1 and WORKERS at least 0, got {slab} and {workers}")
        device = pick_device()
        net, config = load_model(model_dir, device)
    except ModelError as exc:
        log(str(exc))
        return EXIT_BAD_MODEL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log(
        f"running on {device} ({name}), torch {torch.__version__}, {workers} workers, /dev/shm {shm_megabytes():.0f} MB"
    )
    volumes = sorted(p for p in input_dir.rglob("*") if p.is_file() and volume_name(p))
    if not volumes:
        log(f"no volumes (.nii, .nii.gz, .npy) found under {input_dir}")
        return EXIT_NO_INPUT
    summary: dict[str, Any] = {"device": str(device), "volumes": {}, "errors": {}}
    for path in volumes:
        rel = path.relative_to(input_dir)
        began = time.monotonic()
        stem, suffix = volume_name(path) or (path.stem, path.suffix)
        try:
            volume, image = load_volume(path)
            if volume.ndim != 3:
                raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
            labels = segment(net, volume, config, device, slab, workers)
        except ShmTooSmall as exc:
            log(
                f"{rel}: the data loader workers ran out of shared memory (/dev/shm is {shm_megabytes():.0f} MB): "
                "register the model with a larger shm_size (e.g. --shm-size 2g), or set WORKERS=0 or a smaller "
                f"SLAB: {exc}"
            )
            return EXIT_SHM_TOO_SMALL
        except READ_ERRORS as exc:
            summary["errors"][rel.as_posix()] = f"{type(exc).__name__}: {exc}"
            log(f"{rel}: FAILED: {exc}")
            continue
        target = output_dir / rel.with_name(f"{stem}_seg{suffix}")
        save_labels(target, labels, image)
        voxels = int(labels.sum())
        summary["volumes"][rel.as_posix()] = {
            "shape": list(volume.shape),
            "segmentation": target.relative_to(output_dir).as_posix(),
            "voxels": voxels,
            "fraction": voxels / labels.size,
            "seconds": round(time.monotonic() - began, 3),
        }
        log(f"{rel}: {voxels} voxels segmented ({time.monotonic() - began:.1f} s)")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return EXIT_SOME_FAILED if summary["errors"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
