"""Model versions with a real consumer: a task finishes on the version it was submitted with, the next runs the new
one, and the old version's zip and content folder go once no task needs them."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.consumer.conftest import PrivateApi, RunningWorker, wait_until
from tests.consumer.helpers import zip_bytes

pytestmark = pytest.mark.docker


def _seen(api: PrivateApi, uid: str) -> tuple[bytes, bytes]:
    with zipfile.ZipFile(io.BytesIO(api.http.get(f"/api/tasks/{uid}").content)) as archive:
        return archive.read("weights-start.txt"), archive.read("weights-end.txt")


def test_update_while_a_task_runs(
    private_api: PrivateApi, start_worker: Callable[..., RunningWorker], model_images: dict[str, str]
) -> None:
    tag = model_images["read_model_slow"]
    model = private_api.add_model(tag, zip_file=zip_bytes({"weights.txt": b"v1"}))
    hid = model["human_readable_id"]
    worker = start_worker()
    old = private_api.submit(hid, zip_bytes({"a": b"b"}))
    private_api.wait(old, {"running"})
    put = private_api.http.put(
        f"/api/models/{hid}",
        params={"container_tag": tag, "use_gpu": False, "timeout": 60, "mem_limit": "128m", "shm_size": "64m"},
        files={"zip_file": ("model.zip", zip_bytes({"weights.txt": b"v2"}), "application/zip")},
    )
    assert put.status_code == 200 and put.json()["version"] == 2, put.text
    new = private_api.submit(hid, zip_bytes({"a": b"b"}))
    done = private_api.wait(old, {"finished", "failed"})
    assert (done["status"], done["model_version"]) == ("finished", 1), done
    assert _seen(private_api, old) == (b"v1", b"v1")
    done = private_api.wait(new, {"finished", "failed"})
    assert (done["status"], done["model_version"]) == ("finished", 2), done
    assert _seen(private_api, new) == (b"v2", b"v2")
    data = private_api.env["DATA_DIR"]
    stored = [p.name for p in Path(data, "models").iterdir()]
    assert stored == [f"{model['id']}-{put.json()['zip_sha256']}.zip"], "version 1's zip is gone"
    models_root = worker.worker.runner.workspace.models_root
    old_folder = models_root / f"{hid}-{model['zip_sha256'][:16]}"
    wait_until(lambda: not old_folder.exists(), 10, "version 1's content folder to go")
    assert (models_root / f"{hid}-{put.json()['zip_sha256'][:16]}" / "weights.txt").read_bytes() == b"v2"
