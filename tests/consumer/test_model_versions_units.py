"""The consumer keeps the content of model versions the private API still needs (no docker)."""

from __future__ import annotations

import fcntl
from pathlib import Path

from job_consumer.schemas import ModelInfo
from job_consumer.workspace import Workspace


def test_old_versions_exclude_the_task_s_and_the_needed_ones(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path, instance_id="c1")
    current, needed, unneeded = "a" * 64, "b" * 64, "c" * 64
    for sha in (current, needed, unneeded):
        (workspace.models_root / f"seg-{sha[:16]}").mkdir(parents=True)
    (workspace.models_root / f"segx-{unneeded[:16]}").mkdir()  # another model's folder
    model = ModelInfo(id=1, human_readable_id="seg", container_tag="t", model_available=True, zip_sha256=current)
    old = workspace.old_model_versions(model, keep=[current, needed])
    assert [key for key, _ in old] == [f"seg-{unneeded[:16]}"]
    assert workspace.remove_model_version(old[0][0])
    assert not (workspace.models_root / f"seg-{unneeded[:16]}").exists()
    held = workspace.hold_model(model)
    try:
        assert not workspace.remove_model_version(model.content_key or "")  # a task holds it: it stays
    finally:
        assert held is not None
        held.close()


def test_content_a_hold_kept_goes_once_the_hold_goes(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path, instance_id="i1")
    old = workspace.models_root / "seg-0123456789abcdef"
    old.mkdir(parents=True)
    hold = workspace._lock(old.name, fcntl.LOCK_SH, wait=False)
    assert hold is not None
    assert workspace.remove_model_version(old.name) is False and old.is_dir()
    hold.close()
    workspace.remove_deferred_versions()
    assert not old.exists()
