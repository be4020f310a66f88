"""Per-volume statistics and a thresholded mask for every NIfTI (.nii, .nii.gz) and NumPy (.npy) volume under /input.

Writes /output/stats.json (one entry per volume) and /output/masks/<same path>_mask.<same format> (uint8, 1 where
the voxel is >= the threshold; a NIfTI mask keeps the volume's affine). Volumes are read slab by slab (.npy and
.nii memory-mapped, .nii.gz decompressed as it goes), so a volume larger than the container's memory limit still
works for its statistics; a NIfTI mask is built in memory (one byte a voxel) before it is written.

Settings, in this order: environment variables, /model/config.json, defaults.
  THRESHOLD   voxel value for the mask (default 300, bone in Hounsfield units)
  SLAB        slices per slab along the first axis, a NIfTI file's last (default 16)
  INPUT_DIR, OUTPUT_DIR, MODEL_DIR   default /input, /output, /model (change them to run outside a container)

Exit codes: 0 all volumes done; 2 no volume (.nii, .nii.gz, .npy) in the input; 3 some volumes could not be read
(the others are done, stats.json says which failed and why); 4 bad settings.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

EXIT_OK, EXIT_NO_INPUT, EXIT_SOME_FAILED, EXIT_BAD_SETTINGS = 0, 2, 3, 4
PERCENTILES = (1, 5, 50, 95, 99)
# Percentiles are taken on a strided sample: exact percentiles of a 2 GB volume would need it all in memory.
SAMPLE_TARGET = 2_000_000
SUFFIXES = (".nii.gz", ".nii", ".npy")
# What a truncated, corrupt or unsuitable file raises: that volume fails, the others go on.
READ_ERRORS = (ValueError, OSError, EOFError, zlib.error, ImageFileError, HeaderDataError)


class _Reversed:
    """A NIfTI image's data with its axes reversed, read lazily: slabs along axis 0 are contiguous on disk.

    NIfTI stores the first axis fastest (Fortran order), so slabs along its last axis are what can be read without
    going through the whole file for each of them.
    """

    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy
        self.shape = tuple(reversed(proxy.shape))
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))
        self.dtype = np.dtype(proxy.dtype)

    def __getitem__(self, index: slice) -> np.ndarray:
        """Slices index..., along the reversed first axis (the file's last)."""
        return np.asarray(self._proxy[..., index]).T


def log(message: str) -> None:
    """Log to stdout; the server keeps the tail for the task's logs."""
    print(f"[volume-stats] {message}", flush=True)


def load_settings(model_dir: Path) -> dict[str, float]:
    """Threshold and slab size from the environment, /model/config.json, or defaults."""
    config: dict[str, Any] = {}
    config_file = model_dir / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
    threshold = float(os.environ.get("THRESHOLD", config.get("threshold", 300)))
    slab = int(os.environ.get("SLAB", config.get("slab", 16)))
    if slab < 1:
        raise ValueError(f"SLAB must be at least 1, got {slab}")
    return {"threshold": threshold, "slab": slab}


def volume_name(path: Path) -> tuple[str, str] | None:
    """(stem, suffix) of a volume file this model reads, or None for any other file."""
    for suffix in SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)], suffix
    return None


def open_volume(path: Path, mask_path: Path) -> tuple[Any, np.ndarray, Callable[[], None], bool]:
    """The volume, its mask to fill (same shape), the function that writes the mask, and whether axes are reversed."""
    if path.name.endswith(".npy"):
        volume = np.load(path, mmap_mode="r", allow_pickle=False)
        check_volume(volume.shape, volume.dtype)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        mask = np.lib.format.open_memmap(mask_path, mode="w+", dtype=np.uint8, shape=volume.shape)
        return volume, mask, mask.flush, False
    image = nib.load(path, keep_file_open=True)
    if not isinstance(image, nib.Nifti1Image):  # NIfTI-2 images are NIfTI-1 images too
        raise ValueError(f"expected a NIfTI image, got {type(image).__name__}")
    check_volume(image.shape, image.get_data_dtype())
    reversed_volume = _Reversed(image.dataobj)
    mask = np.zeros(reversed_volume.shape, dtype=np.uint8)

    def save() -> None:
        header = image.header.copy()
        header.set_data_dtype(np.uint8)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(type(image)(mask.T, image.affine, header), mask_path)

    return reversed_volume, mask, save, True


def check_volume(shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    """ValueError unless this is an image volume of numbers."""
    if len(shape) < 2 or int(np.prod(shape)) == 0:
        raise ValueError(f"expected an image volume (2 or more dimensions), got shape {tuple(shape)}")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise ValueError(f"expected numbers, got dtype {dtype}")


def volume_stats(path: Path, mask_path: Path, threshold: float, slab: int) -> dict[str, Any]:
    """Statistics of one volume; fills its mask slab by slab and writes it."""
    volume, mask, save_mask, axes_reversed = open_volume(path, mask_path)
    stride = max(1, volume.size // SAMPLE_TARGET)
    total = total_sq = 0.0
    low, high = np.inf, -np.inf
    above = nonfinite = 0
    samples = []
    lo_idx = [np.inf] * volume.ndim
    hi_idx = [-np.inf] * volume.ndim
    for start in range(0, volume.shape[0], slab):
        block = np.asarray(volume[start : start + slab], dtype=np.float64)
        finite = np.isfinite(block)
        nonfinite += int(block.size - finite.sum())
        values = block[finite]
        if values.size:
            total += float(values.sum())
            total_sq += float(np.square(values).sum())
            low, high = min(low, float(values.min())), max(high, float(values.max()))
        selected = block >= threshold
        mask[start : start + slab] = selected
        count = int(selected.sum())
        above += count
        if count:
            coords = np.nonzero(selected)
            for axis, axis_coords in enumerate(coords):
                offset = start if axis == 0 else 0
                lo_idx[axis] = min(lo_idx[axis], int(axis_coords.min()) + offset)
                hi_idx[axis] = max(hi_idx[axis], int(axis_coords.max()) + offset)
        samples.append(block.reshape(-1)[::stride])
    save_mask()
    del mask
    finite_count = volume.size - nonfinite
    mean = total / finite_count if finite_count else float("nan")
    variance = max(total_sq / finite_count - mean * mean, 0.0) if finite_count else float("nan")
    sample = np.concatenate(samples)
    sample = sample[np.isfinite(sample)]
    percentiles = np.percentile(sample, PERCENTILES).tolist() if sample.size else [None] * len(PERCENTILES)
    bbox = None
    order = -1 if axes_reversed else 1  # report in the file's own axis order
    if above:
        bbox = {"min": [int(v) for v in lo_idx][::order], "max": [int(v) for v in hi_idx][::order]}
    return {
        "format": "nifti" if axes_reversed else "npy",
        "shape": list(volume.shape)[::order],
        "dtype": str(volume.dtype),
        "voxels": int(volume.size),
        "nonfinite_voxels": nonfinite,
        "min": low if finite_count else None,
        "max": high if finite_count else None,
        "mean": mean,
        "std": variance**0.5,
        "percentiles": dict(zip((f"p{p:02d}" for p in PERCENTILES), percentiles, strict=True)),
        "percentiles_exact": stride == 1,
        "mask": {
            "file": str(mask_path),
            "voxels_above_threshold": above,
            "fraction": above / volume.size,
            "bounding_box": bbox,
        },
    }


def main() -> int:
    """Process every volume under INPUT_DIR; returns the exit code."""
    input_dir = Path(os.environ.get("INPUT_DIR", "/input"))
    output_dir = Path(os.environ.get("OUTPUT_DIR", "/output"))
    model_dir = Path(os.environ.get("MODEL_DIR", "/model"))
    try:
        settings = load_settings(model_dir)
    except (ValueError, json.JSONDecodeError) as exc:
        log(f"bad settings: {exc}")
        return EXIT_BAD_SETTINGS
    volumes = sorted(p for p in input_dir.rglob("*") if p.is_file() and volume_name(p))
    if not volumes:
        log(f"no volumes (.nii, .nii.gz, .npy) found under {input_dir}")
        return EXIT_NO_INPUT
    log(f"{len(volumes)} volume(s), threshold {settings['threshold']}")
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for path in volumes:
        rel = path.relative_to(input_dir)
        stem, suffix = volume_name(path) or (path.stem, path.suffix)
        mask_path = output_dir / "masks" / rel.with_name(f"{stem}_mask{suffix}")
        began = time.monotonic()
        try:
            stats = volume_stats(path, mask_path, settings["threshold"], int(settings["slab"]))
        except READ_ERRORS as exc:
            errors[rel.as_posix()] = f"{type(exc).__name__}: {exc}"
            log(f"{rel}: FAILED: {exc}")
            mask_path.unlink(missing_ok=True)
            continue
        stats["mask"]["file"] = mask_path.relative_to(output_dir).as_posix()
        results[rel.as_posix()] = stats
        log(
            f"{rel}: shape {stats['shape']}, mean {stats['mean']:.2f}, {stats['mask']['fraction']:.2%} above "
            f"threshold ({time.monotonic() - began:.1f} s)"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"threshold": settings["threshold"], "volumes": results, "errors": errors}
    (output_dir / "stats.json").write_text(json.dumps(report, indent=2) + "\n")
    return EXIT_SOME_FAILED if errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
