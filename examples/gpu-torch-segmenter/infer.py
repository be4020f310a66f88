"""Segment every NumPy volume under /input with the PyTorch weights in /model; GPU when there is one, else CPU.

/model (the model's zip, mounted read-only) holds `weights.pt` (a state dict) and `config.json`
(`features`, `mean`, `std`, `probability`). For every `/input/**/*.npy` it writes `/output/<same path>_seg.npy`
(uint8 labels) and one `/output/summary.json`.

A volume goes through the network in slabs along its first axis (`SLAB` slices, with the few slices of context
the convolutions need), so a large CT fits in GPU memory; a CUDA out-of-memory error halves the slab and retries.

Environment: INPUT_DIR, OUTPUT_DIR, MODEL_DIR (default /input, /output, /model); DEVICE (`cuda`, `cpu`;
default: cuda when available); SLAB (default 32).
Exit codes: 0 done; 2 no .npy volume in the input; 3 some volumes could not be read; 4 the weights or config
in /model are missing or do not fit the network.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segmenter import CONV3_LAYERS, build

EXIT_OK, EXIT_NO_INPUT, EXIT_SOME_FAILED, EXIT_BAD_MODEL = 0, 2, 3, 4


class ModelError(Exception):
    """The model content in /model is missing or unusable."""


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
    net: torch.nn.Module, volume: np.ndarray, config: dict[str, Any], device: torch.device, slab: int
) -> np.ndarray:
    """Labels (uint8) for one volume, computed slab by slab with enough context that slabs join seamlessly."""
    halo = CONV3_LAYERS
    mean, std = float(config.get("mean", 0.0)), float(config.get("std", 1.0))
    probability = float(config.get("probability", 0.5))
    cut = float(np.log(probability / (1 - probability)))  # compare logits: no sigmoid over the whole volume
    labels = np.zeros(volume.shape, dtype=np.uint8)
    depth = volume.shape[0]
    start = 0
    while start < depth:
        stop = min(start + slab, depth)
        lo, hi = max(0, start - halo), min(depth, stop + halo)
        block = (np.asarray(volume[lo:hi], dtype=np.float32) - mean) / std
        try:
            with torch.inference_mode():
                x = torch.from_numpy(block)[None, None].to(device)
                logits = net(x)[0, 0, start - lo : start - lo + (stop - start)]
                labels[start:stop] = (logits > cut).to("cpu", torch.uint8).numpy()
        except torch.cuda.OutOfMemoryError:
            if slab == 1:
                raise
            slab = max(1, slab // 2)
            torch.cuda.empty_cache()
            log(f"CUDA out of memory; slab reduced to {slab} slices")
            continue
        start = stop
    return labels


def main() -> int:
    """Segment every volume; returns the exit code."""
    input_dir = Path(os.environ.get("INPUT_DIR", "/input"))
    output_dir = Path(os.environ.get("OUTPUT_DIR", "/output"))
    model_dir = Path(os.environ.get("MODEL_DIR", "/model"))
    slab = int(os.environ.get("SLAB", "32"))
    try:
        if slab < 1:
            raise ModelError(f"SLAB must be at least 1, got {slab}")
        device = pick_device()
        net, config = load_model(model_dir, device)
    except ModelError as exc:
        log(str(exc))
        return EXIT_BAD_MODEL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log(f"running on {device} ({name}), torch {torch.__version__}")
    volumes = sorted(p for p in input_dir.rglob("*.npy") if p.is_file())
    if not volumes:
        log(f"no .npy volumes found under {input_dir}")
        return EXIT_NO_INPUT
    summary: dict[str, Any] = {"device": str(device), "volumes": {}, "errors": {}}
    for path in volumes:
        rel = path.relative_to(input_dir)
        began = time.monotonic()
        try:
            volume = np.load(path, mmap_mode="r", allow_pickle=False)
            if volume.ndim != 3:
                raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
            labels = segment(net, volume, config, device, slab)
        except (ValueError, OSError, EOFError) as exc:
            summary["errors"][rel.as_posix()] = f"{type(exc).__name__}: {exc}"
            log(f"{rel}: FAILED: {exc}")
            continue
        target = output_dir / rel.with_name(rel.stem + "_seg.npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, labels)
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
