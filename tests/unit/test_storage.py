"""Storage under DATA_DIR: a start removes what crashed uploads left, never a live upload of another instance."""

from __future__ import annotations

import os
import time
from pathlib import Path

from private_api.storage import Storage


def test_clean_temp_removes_only_idle_part_files(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    live = storage.temp_path()
    live.write_bytes(b"still arriving")
    crashed = storage.temp_path()
    crashed.write_bytes(b"cut off")
    long_ago = time.time() - 3600
    os.utime(crashed, (long_ago, long_ago))

    assert storage.clean_temp(idle_seconds=600) == 1

    assert live.exists()
    assert not crashed.exists()
