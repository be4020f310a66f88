"""Fault: the consumer's WORK_DIR is full (a small tmpfs mounted as WORK_DIR).

A full disk is the host's problem, never the model's: below MIN_FREE_DISK_BYTES the consumer releases the task
(infrastructure) instead of starting it, a disk that fills up mid-task (ENOSPC) does the same and leaves nothing on
the disk, no task fails for it, and once space is back the task runs by itself.
"""

from __future__ import annotations

import os
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.consumer.conftest import (
    PrivateApi,
    start_consumer_process,
    stop_process,
    task_leftovers,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

MIB = 1024 * 1024


@pytest.fixture
def private_api_env() -> dict[str, str]:
    """Infrastructure releases must not run out while the disk is full."""
    return {"MAX_INFRA_RETRIES": "1000"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (the engine sees it at the same path: it runs on this host)."""
    mount_point = tmp_path / f"work-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _random_zip(path: Path, size: int) -> bytes:
    """A zip holding `size` incompressible bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("scan.bin", os.urandom(size))
    return path.read_bytes()


def _files_under(root: Path) -> list[Path]:
    """Regular files under root (lock files of model content aside)."""
    return [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_below_min_free_disk_the_task_is_released_and_runs_once_space_is_back(
    private_api: PrivateApi, model_images, amqp_url, consumer_docker, small_disk, tmp_path, consumer_id
):
    """Free space under MIN_FREE_DISK_BYTES: released, not failed, the reason logged; freed space: it finishes."""
    ballast = small_disk / "ballast.bin"
    ballast.write_bytes(b"\0" * 20 * MIB)  # 4 MiB left, below the 8 MiB asked for
    model = private_api.add_model(model_images["copy"])
    uid = private_api.submit(model["human_readable_id"], _random_zip(tmp_path / "in.zip", 1000))
    process, log_path = start_consumer_process(
        private_api, amqp_url, consumer_id, tmp_path, WORK_DIR=str(small_disk), MIN_FREE_DISK_BYTES=str(8 * MIB)
    )
    try:
        wait_until(lambda: "below MIN_FREE_DISK_BYTES" in log_path.read_text(), 30, "the consumer to see the full disk")
        status = private_api.status(uid)
        assert status["status"] in ("pending", "running") and status["exit_code"] is None, status
        assert not task_leftovers(consumer_docker, uid), "no container was started"
        ballast.unlink()
        status = private_api.wait(uid, {"finished", "failed"}, timeout=60)
        assert status["status"] == "finished", status
    finally:
        assert stop_process(process) == 0


def test_disk_full_mid_task_is_an_infrastructure_error_and_leaves_nothing(
    private_api: PrivateApi, model_images, amqp_url, consumer_docker, small_disk, tmp_path, consumer_id
):
    """ENOSPC while the input is extracted: the task is released (not failed) and its folder is gone."""
    model = private_api.add_model(model_images["copy"])
    uid = private_api.submit(model["human_readable_id"], _random_zip(tmp_path / "in.zip", 14 * MIB))
    process, log_path = start_consumer_process(
        private_api, amqp_url, consumer_id, tmp_path, WORK_DIR=str(small_disk), MIN_FREE_DISK_BYTES=str(MIB)
    )
    try:
        wait_until(lambda: "no space left in WORK_DIR" in log_path.read_text(), 60, "the consumer to hit ENOSPC")
        status = private_api.status(uid)
        assert status["status"] != "failed", status
        assert " ERROR " not in log_path.read_text()
    finally:
        assert stop_process(process) == 0
    assert _files_under(small_disk) == [], "a full disk leaves no partial file behind"
    assert not task_leftovers(consumer_docker, uid)
    assert private_api.status(uid)["status"] == "pending"
