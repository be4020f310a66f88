"""The example models in examples/, built as images and run through the whole HTTPS stack (used by the e2e test).

Where Docker Hub cannot be reached (CI), both build on the stand-in `PYTHON_IMAGE` (Python 3.11) and the segmenter
gets PyTorch from the CPU-only wheel `TORCH_WHEEL` (default: the one in /opt/wheels), so no registry is asked for
anything but PyPI. Elsewhere they build from their Dockerfiles' defaults (python:3.11-slim, pytorch/pytorch).
The tags are stable and the images are kept: docker's layer cache makes the next run's builds take seconds.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import docker
import docker.errors
import httpx
import nibabel as nib
import numpy as np

from tests.consumer.helpers import zip_bytes

from .stack import ROOT

__all__ = ["build_example_images", "run_examples"]

EXAMPLES = ROOT / "examples"
TAG_PREFIX = "inference-server-e2e/example-"
TORCH_WHEEL_GLOB = "/opt/wheels/torch-*+cpu-cp311-*.whl"


def _build(client: docker.DockerClient, context: Path, tag: str, buildargs: dict[str, str]) -> None:
    """docker build, with the machine's network (pip reaches PyPI as the host does); the error carries the log."""
    try:
        client.images.build(path=str(context), tag=tag, buildargs=buildargs, network_mode="host", rm=True)
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
        raise AssertionError(f"building {tag} failed: {exc}\n{log[-4000:]}") from exc


def build_example_images() -> dict[str, str]:
    """Build both examples; returns {example folder name: image tag}."""
    base = os.environ.get("PYTHON_IMAGE")
    args = {"BASE_IMAGE": base} if base else {}
    client = docker.from_env(timeout=900)
    tags = {name: f"{TAG_PREFIX}{name}:e2e" for name in ("cpu-volume-stats", "gpu-torch-segmenter")}
    try:
        _build(client, EXAMPLES / "cpu-volume-stats", tags["cpu-volume-stats"], args)
        wheels = [os.environ["TORCH_WHEEL"]] if os.environ.get("TORCH_WHEEL") else glob.glob(TORCH_WHEEL_GLOB)
        segmenter = EXAMPLES / "gpu-torch-segmenter"
        if not base:
            _build(client, segmenter, tags["gpu-torch-segmenter"], {})
            return tags
        if not wheels:
            raise AssertionError(f"PYTHON_IMAGE is set but no CPU torch wheel is: set TORCH_WHEEL ({TORCH_WHEEL_GLOB})")
        with tempfile.TemporaryDirectory(prefix="inference-e2e-segmenter-") as tmp:
            context = Path(tmp)
            for item in segmenter.iterdir():
                if item.is_file():
                    shutil.copy(item, context / item.name)
            wheel = Path(wheels[0])
            # A hard link when on one file system: the wheel is 190 MB.
            try:
                os.link(wheel, context / wheel.name)
            except OSError:
                shutil.copy(wheel, context / wheel.name)
            _build(client, context, tags["gpu-torch-segmenter"], {**args, "TORCH": wheel.name})
    finally:
        client.close()
    return tags


def ct_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """A CT-like volume in Hounsfield units: air, soft tissue and a bone cube of 10x10x10 voxels."""
    volume = np.full(shape, -1000, dtype=np.int16)
    volume[2:-2, 2:-2, 2:-2] = 40
    volume[10:20, 10:20, 12:22] = 900
    return volume


def _nifti_bytes(volume: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz file's bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), path)
        return path.read_bytes()


def _npy_bytes(volume: np.ndarray) -> bytes:
    """A .npy file's bytes."""
    buffer = io.BytesIO()
    np.save(buffer, volume)
    return buffer.getvalue()


def _segmenterzip_bytes() -> bytes:
    """The segmenter's model zip, made by its own packaging script."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.zip"
        subprocess.run(
            [sys.executable, str(EXAMPLES / "gpu-torch-segmenter" / "make_model_zip.py"), str(out)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        return out.read_bytes()


def _register(https: httpx.Client, hid: str, image: str, model_zip: bytes, **params: str) -> None:
    """POST a CPU model with its zip."""
    query = {"container_tag": image, "human_readable_id": hid, "model_available": "true", "use_gpu": "false"}
    res = https.post(
        "/api/models", params={**query, **params}, files={"zip_file": ("model.zip", model_zip, "application/zip")}
    )
    assert res.status_code == 200, res.text


def _submit(https: httpx.Client, hid: str, files: dict[str, bytes]) -> str:
    """POST a task; its uid."""
    res = https.post("/api/tasks/", params={"human_readable_id": hid}, files={"zip_file": ("in.zip", zip_bytes(files))})
    assert res.status_code == 200, res.text
    return str(json.loads(res.content))


def _wait(https: httpx.Client, uid: str, seconds: float = 300) -> httpx.Response:
    """The task's answer once it is neither pending nor running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        res = https.get(f"/api/tasks/{uid}")
        if res.status_code != 551:
            return res
        time.sleep(1)
    status = https.get(f"/api/tasks/{uid}/status/").text
    raise AssertionError(f"task {uid} still pending or running after {seconds}s: {status}")


def _load(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """A .npy or .nii.gz volume from the output zip."""
    data = archive.read(name)
    if name.endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        image = nib.load(path)
        assert isinstance(image, nib.Nifti1Image), type(image)
        return np.asarray(image.dataobj)


def run_examples(https: httpx.Client, images: dict[str, str]) -> None:
    """Both examples on NIfTI and NumPy input; the segmenter with a too small shm_size fails saying so."""
    ct = ct_volume((32, 40, 36))
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    inputs = {"patient1/ct.nii.gz": _nifti_bytes(ct, affine), "patient2/ct.npy": _npy_bytes(ct)}
    bone = ct >= 300

    _register(https, "e2e-volume-stats", images["cpu-volume-stats"], zip_bytes({"config.json": b'{"threshold": 300}'}))
    segmenter_zip = _segmenterzip_bytes()
    _register(https, "e2e-segmenter", images["gpu-torch-segmenter"], segmenter_zip, shm_size="256m")
    _register(https, "e2e-segmenter-tiny-shm", images["gpu-torch-segmenter"], segmenter_zip, shm_size="4m")
    stats_uid = _submit(https, "e2e-volume-stats", inputs)
    seg_uid = _submit(https, "e2e-segmenter", inputs)
    tiny_uid = _submit(https, "e2e-segmenter-tiny-shm", {"ct.npy": _npy_bytes(ct_volume((64, 160, 160)))})

    res = _wait(https, stats_uid)
    assert res.status_code == 200, res.text
    with zipfile.ZipFile(io.BytesIO(res.content)) as archive:
        report = json.loads(archive.read("stats.json"))
        assert report["errors"] == {}
        for name, fmt in (("patient1/ct.nii.gz", "nifti"), ("patient2/ct.npy", "npy")):
            stats = report["volumes"][name]
            assert (stats["format"], stats["shape"]) == (fmt, [32, 40, 36])
            assert stats["mask"]["voxels_above_threshold"] == int(bone.sum())
            assert stats["mask"]["bounding_box"] == {"min": [10, 10, 12], "max": [19, 19, 21]}
            assert np.array_equal(_load(archive, stats["mask"]["file"]), bone.astype(np.uint8))

    res = _wait(https, seg_uid)
    assert res.status_code == 200, res.text
    with zipfile.ZipFile(io.BytesIO(res.content)) as archive:
        summary = json.loads(archive.read("summary.json"))
        assert summary["device"] == "cpu" and summary["errors"] == {}
        for name in ("patient1/ct_seg.nii.gz", "patient2/ct_seg.npy"):
            labels = _load(archive, name)
            assert labels.shape == ct.shape and labels[11:19, 11:19, 13:21].all() and not labels[:8].any()
    assert "running on cpu" in https.get(f"/api/tasks/{seg_uid}/logs").text

    res = _wait(https, tiny_uid)
    assert res.status_code == 552, res.text
    failure = res.json()
    assert failure["exit_code"] == 135, failure
    assert "shm_size" in failure["reason"] and "4m" in failure["reason"], failure
    assert "ran out of shared memory" in https.get(f"/api/tasks/{tiny_uid}/logs").text
