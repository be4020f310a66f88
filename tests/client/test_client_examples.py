"""The example models' entrypoints run on generated data, outside docker (tests/e2e builds and runs their images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STATS = EXAMPLES / "cpu-volume-stats" / "stats.py"
SEGMENTER = EXAMPLES / "gpu-torch-segmenter"


def ct_volume(shape: tuple[int, int, int] = (40, 32, 36)) -> np.ndarray:
    """A CT-like volume in Hounsfield units: air, a noisy soft-tissue box, and a bone cube."""
    rng = np.random.default_rng(7)
    volume = np.full(shape, -1000, dtype=np.int16)
    body = volume[4:36, 3:29, 3:33]
    body[...] = rng.normal(40, 15, size=body.shape).astype(np.int16)
    volume[15:25, 10:20, 12:22] = 900
    return volume


def load_nifti(path: Path) -> nib.Nifti1Image:
    """A NIfTI file the examples wrote."""
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image), type(image)
    return image


def run_script(script: Path, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run an example entrypoint with INPUT_DIR/OUTPUT_DIR/MODEL_DIR under tmp."""
    environment = {
        **os.environ,
        "INPUT_DIR": str(tmp / "input"),
        "OUTPUT_DIR": str(tmp / "output"),
        "MODEL_DIR": str(tmp / "model"),
        **env,
    }
    return subprocess.run(
        [sys.executable, str(script)], env=environment, capture_output=True, text=True, timeout=300, check=False
    )


def test_volume_stats_on_generated_volumes(tmp_path: Path) -> None:
    (tmp_path / "input" / "patient2").mkdir(parents=True)
    ct = ct_volume()
    np.save(tmp_path / "input" / "ct.npy", ct)
    dose = np.linspace(0, 70, 5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    dose[0, 0, 0] = np.nan
    np.save(tmp_path / "input" / "patient2" / "dose.npy", dose)
    done = run_script(STATS, tmp_path, SLAB="7")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "output" / "stats.json").read_text())
    stats = report["volumes"]["ct.npy"]
    assert stats["shape"] == [40, 32, 36] and stats["dtype"] == "int16"
    assert stats["mean"] == pytest.approx(float(ct.mean()))
    assert stats["std"] == pytest.approx(float(ct.std()), rel=1e-9)
    assert stats["min"] == -1000 and stats["max"] == 900
    assert stats["percentiles"]["p50"] == pytest.approx(float(np.percentile(ct, 50)))
    assert stats["mask"]["voxels_above_threshold"] == 1000
    assert stats["mask"]["bounding_box"] == {"min": [15, 10, 12], "max": [24, 19, 21]}
    mask = np.load(tmp_path / "output" / stats["mask"]["file"])
    assert mask.dtype == np.uint8 and np.array_equal(mask, (ct >= 300).astype(np.uint8))
    dose_stats = report["volumes"]["patient2/dose.npy"]
    assert dose_stats["nonfinite_voxels"] == 1
    assert dose_stats["mean"] == pytest.approx(float(np.nanmean(dose)), rel=1e-6)
    assert (tmp_path / "output" / "masks" / "patient2" / "dose_mask.npy").is_file()


def test_volume_stats_reads_nifti_in_its_own_axis_order(tmp_path: Path) -> None:
    (tmp_path / "input" / "scans").mkdir(parents=True)
    ct = ct_volume()
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), tmp_path / "input" / "scans" / "ct.nii.gz")
    # Scaled storage: the statistics are of the scaled values, as every NIfTI reader shows them.
    scaled = nib.Nifti1Image(ct, affine)
    scaled.header.set_slope_inter(2.0, 10.0)
    nib.save(scaled, tmp_path / "input" / "scaled.nii")
    done = run_script(STATS, tmp_path, SLAB="5")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "output" / "stats.json").read_text())
    stats = report["volumes"]["scans/ct.nii.gz"]
    assert (stats["format"], stats["shape"]) == ("nifti", [40, 32, 36])
    assert stats["mean"] == pytest.approx(float(ct.mean()))
    assert stats["mask"]["bounding_box"] == {"min": [15, 10, 12], "max": [24, 19, 21]}
    assert stats["mask"]["file"] == "masks/scans/ct_mask.nii.gz"
    mask = load_nifti(tmp_path / "output" / stats["mask"]["file"])
    assert np.allclose(mask.affine, affine) and mask.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(mask.dataobj), (ct >= 300).astype(np.uint8))
    scaled_stats = report["volumes"]["scaled.nii"]
    assert scaled_stats["min"] == pytest.approx(-1990) and scaled_stats["max"] == pytest.approx(1810)
    assert scaled_stats["mask"]["voxels_above_threshold"] == int((ct * 2 + 10 >= 300).sum())


def test_volume_stats_threshold_from_model_config(tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"threshold": 0}')
    np.save(tmp_path / "input" / "ct.npy", ct_volume())
    assert run_script(STATS, tmp_path).returncode == 0
    report = json.loads((tmp_path / "output" / "stats.json").read_text())
    assert report["threshold"] == 0
    assert report["volumes"]["ct.npy"]["mask"]["voxels_above_threshold"] == int((ct_volume() >= 0).sum())


def test_volume_stats_failures(tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    done = run_script(STATS, tmp_path)
    assert done.returncode == 2 and "no volumes (.nii, .nii.gz, .npy)" in done.stdout
    np.save(tmp_path / "input" / "good.npy", ct_volume((4, 5, 6)))
    (tmp_path / "input" / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "input" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    np.save(tmp_path / "input" / "line.npy", np.arange(10))
    done = run_script(STATS, tmp_path)
    assert done.returncode == 3
    report = json.loads((tmp_path / "output" / "stats.json").read_text())
    assert set(report["volumes"]) == {"good.npy"}
    assert set(report["errors"]) == {"broken.npy", "broken.nii.gz", "line.npy"}
    assert "2 or more dimensions" in report["errors"]["line.npy"]
    assert run_script(STATS, tmp_path, SLAB="0").returncode == 4


@pytest.fixture
def segmenter_model(tmp_path: Path) -> Path:
    """The example's model.zip, built by its packaging script and unpacked as the server would mount it."""
    pytest.importorskip("torch", reason="the GPU example needs PyTorch (pip install '.[examples]')")
    built = subprocess.run(
        [sys.executable, str(SEGMENTER / "make_model_zip.py"), str(tmp_path / "model.zip"), "--threshold", "300"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        assert sorted(archive.namelist()) == ["config.json", "weights.pt"]
        archive.extractall(tmp_path / "model")
    return tmp_path / "model"


def test_segmenter_runs_on_cpu_with_weights_from_model(tmp_path: Path, segmenter_model: Path) -> None:
    (tmp_path / "input" / "scans").mkdir(parents=True)
    ct = ct_volume()
    np.save(tmp_path / "input" / "scans" / "ct.npy", ct)
    done = run_script(SEGMENTER / "infer.py", tmp_path, SLAB="6")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "running on cpu" in done.stdout
    summary = json.loads((tmp_path / "output" / "summary.json").read_text())
    assert summary["device"] == "cpu"
    labels = np.load(tmp_path / "output" / "scans" / "ct_seg.npy")
    assert labels.shape == ct.shape and labels.dtype == np.uint8
    assert labels[16:24, 11:19, 13:21].all()  # the inside of the bone cube
    assert not labels[:, :, :8].any() and not labels[:10].any()  # soft tissue and air stay background
    assert summary["volumes"]["scans/ct.npy"]["voxels"] == int(labels.sum())
    # Slabs join seamlessly: one slab for the whole volume gives the same labels.
    whole = run_script(SEGMENTER / "infer.py", tmp_path, SLAB="1000", OUTPUT_DIR=str(tmp_path / "whole"))
    assert whole.returncode == 0
    assert np.array_equal(labels, np.load(tmp_path / "whole" / "scans" / "ct_seg.npy"))


def test_segmenter_reads_nifti_with_data_loader_workers(tmp_path: Path, segmenter_model: Path) -> None:
    (tmp_path / "input").mkdir()
    ct = ct_volume()
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), tmp_path / "input" / "ct.nii.gz")
    np.save(tmp_path / "input" / "same.npy", ct)
    done = run_script(SEGMENTER / "infer.py", tmp_path, SLAB="6", WORKERS="2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 workers" in done.stdout
    labels = load_nifti(tmp_path / "output" / "ct_seg.nii.gz")
    assert np.allclose(labels.affine, affine) and labels.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(labels.dataobj), np.load(tmp_path / "output" / "same_seg.npy"))


def test_segmenter_refuses_missing_or_wrong_weights(tmp_path: Path, segmenter_model: Path) -> None:
    (tmp_path / "input").mkdir()
    np.save(tmp_path / "input" / "ct.npy", ct_volume((6, 8, 8)))
    config = json.loads((segmenter_model / "config.json").read_text())
    (segmenter_model / "config.json").write_text(json.dumps({**config, "features": 4}))
    done = run_script(SEGMENTER / "infer.py", tmp_path)
    assert done.returncode == 4 and "cannot load the model" in done.stdout
    (segmenter_model / "weights.pt").unlink()
    done = run_script(SEGMENTER / "infer.py", tmp_path)
    assert done.returncode == 4 and "weights.pt is missing" in done.stdout
    done = run_script(SEGMENTER / "infer.py", tmp_path, DEVICE="cuda")
    assert done.returncode == 4
    assert run_script(SEGMENTER / "infer.py", tmp_path, WORKERS="-1").returncode == 4


@pytest.mark.parametrize("example", ["cpu-volume-stats", "gpu-torch-segmenter"])
def test_example_images_install_the_tested_versions(example: str) -> None:
    """Each example's requirements.txt pins exactly what constraints.txt pins (what these tests ran with)."""
    pins = {}
    for line in (EXAMPLES.parent / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[name.lower().replace("_", "-")] = version
    wanted = [
        line.strip() for line in (EXAMPLES / example / "requirements.txt").read_text().splitlines() if "==" in line
    ]
    assert wanted, f"{example}/requirements.txt pins nothing"
    for line in wanted:
        name, _, version = line.partition("==")
        assert pins.get(name.lower().replace("_", "-")) == version, f"{example}: {line} but constraints.txt differs"
    assert "-r /app/requirements.txt" in (EXAMPLES / example / "Dockerfile").read_text()
