"""The model zips on disk (DATA_DIR/models/<model id>-<sha256>.zip): kept while the current version or a version a
pending or running task runs names them, removed once none does.

One process-wide lock is held while a zip lands and the row that names it commits, and while unneeded zips are
found and removed: a removal never sees a landed zip whose version is not committed yet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from private_api import crud_models
from private_api.orm import Model, Task
from private_api.storage import Storage

__all__ = ["after_task_end", "changing", "prune", "prune_all", "remove_all"]

log = logging.getLogger(__name__)

_LOCK = threading.Lock()


@contextmanager
def changing() -> Iterator[None]:
    """Hold the zip lock while a zip lands and the version naming it commits."""
    with _LOCK:
        yield


def prune(session: Session, storage: Storage, model: Model) -> list[str]:
    """Remove the model's zips that neither its current version nor an active task's version names; their sha256s."""
    with _LOCK:
        stored = storage.model_zips(model.id)
        if len(stored) <= 1 and model.zip_sha256 in stored:
            return []
        needed = crud_models.needed_zips(session, model)
        removed = []
        for sha256, path in stored.items():
            if sha256 not in needed:
                path.unlink(missing_ok=True)
                removed.append(sha256)
    if removed:
        log.info("removed %d zip(s) of model %s that no task needs any more", len(removed), model.human_readable_id)
    return removed


def remove_all(storage: Storage, model_id: int) -> None:
    """Remove every zip of a deleted model."""
    with _LOCK:
        for path in storage.model_zips(model_id).values():
            path.unlink(missing_ok=True)


def after_task_end(session: Session, storage: Storage, task: Task) -> None:
    """Once a task of an older version ended, that version's zip may be unneeded: remove it then."""
    if task.model_id is None or task.model_version is None:
        return
    model = session.get(Model, task.model_id)
    if model is not None and model.version != task.model_version:
        prune(session, storage, model)


def prune_all(sessions: sessionmaker[Session], storage: Storage) -> int:
    """Prune every model's zips, and remove those of models that no longer exist (a sweep); how many went."""
    removed = 0
    with sessions() as session:
        models = list(session.scalars(select(Model)))
        known = {m.id for m in models}
        for model in models:
            removed += len(prune(session, storage, model))
    folder = storage.root / "models"
    for path in folder.glob("*-*.zip"):
        model_id = path.stem.partition("-")[0]
        if model_id.isdigit() and int(model_id) not in known:
            with _LOCK, sessions() as session:  # look again under the lock: a model made since has this id
                if session.get(Model, int(model_id)) is None:
                    path.unlink(missing_ok=True)
                    removed += 1
    return removed
