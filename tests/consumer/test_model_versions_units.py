"""The consumer keeps the content of model versions the private API still needs (no docker)."""

from __future__ import annotations

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
