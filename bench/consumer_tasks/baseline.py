"""The baselines: plain `docker run` of the same images, and the input zips both sides use."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from bench.consumer_tasks.options import LABEL_ARG


def input_zip(size: int) -> bytes:
    """A zip holding `size` random bytes."""
    path = Path(tempfile.mkstemp(suffix=".zip")[1])
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("scan.bin", os.urandom(size))
    data = path.read_bytes()
    path.unlink()
    return data


def raw_docker_run(tag: str, data: bytes, work: Path) -> float:
    """Seconds for `docker run` of the image with bind mounts (unzip and zip of the output included)."""
    root = Path(tempfile.mkdtemp(dir=work))
    (root / "in").mkdir()
    (root / "out").mkdir()
    (root / "in.zip").write_bytes(data)
    started = time.monotonic()
    with zipfile.ZipFile(root / "in.zip") as archive:
        archive.extractall(root / "in")
    subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            LABEL_ARG,
            "-v",
            f"{root / 'in'}:/input:ro",
            "-v",
            f"{root / 'out'}:/output",
            tag,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with zipfile.ZipFile(root / "out.zip", "w") as archive:
        for path in (root / "out").rglob("*"):
            archive.write(path, path.relative_to(root / "out"))
    elapsed = time.monotonic() - started
    subprocess.run(["rm", "-rf", str(root)], check=False)
    return elapsed


def raw_docker_lanes(tag: str, tasks: int, lanes: int) -> float:
    """Seconds for `tasks` plain `docker run --rm` of the image, `lanes` at a time (the engine's own floor)."""
    counts = [tasks // lanes + (1 if i < tasks % lanes else 0) for i in range(lanes)]

    def lane(count: int) -> None:
        for _ in range(count):
            subprocess.run(
                ["docker", "run", "--rm", "--network", "none", "--label", LABEL_ARG, "-v", "/output", tag],
                check=True,
                stdout=subprocess.DEVNULL,
            )

    threads = [threading.Thread(target=lane, args=(count,)) for count in counts]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started
