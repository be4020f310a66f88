"""`Idempotency-Key` on POST /api/tasks/: the same key, per owner and for 24 hours, answers the same task uid.

The key's row is written in the transaction that stores the task, and (owner, key) is unique: of two concurrent
requests with one key, one commits its task and the other finds the winner's uid, so there is only ever one task.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from private_api.errors import IdempotencyKeyReused
from private_api.orm import IdempotencyKey, utcnow

__all__ = ["KEY_PATTERN", "TTL", "purge", "remember", "replay"]

TTL = timedelta(hours=24)
# Printable ASCII without spaces (a UUID, a hash, a file name with a date...).
KEY_PATTERN = r"^[!-~]{1,255}$"


def _owner(owner: str | None) -> str:
    """The owner column: "" while the service is open (every caller is the same owner then)."""
    return owner or ""


def purge(session: Session) -> int:
    """Forget keys older than TTL (committed); how many."""
    result = session.execute(
        delete(IdempotencyKey)
        .where(IdempotencyKey.created_at < utcnow() - TTL)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def replay(session: Session, *, owner: str | None, key: str, hid: str) -> str | None:
    """The uid of the task this key made within TTL, None when it made none; IdempotencyKeyReused for another
    model."""
    row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.owner == _owner(owner), IdempotencyKey.key == key))
    if row is None or row.created_at < utcnow() - TTL:
        return None
    if row.model_hid != hid:
        raise IdempotencyKeyReused(
            f"this Idempotency-Key was used for model {row.model_hid!r} already (task {row.task_uid}); "
            "send a new key for another submission",
            task_uid=row.task_uid,
        )
    return row.task_uid


def remember(session: Session, *, owner: str | None, key: str, uid: str, hid: str) -> None:
    """Add the key's row to the submission's transaction; IntegrityError when the same key was stored meanwhile."""
    expired = utcnow() - TTL
    session.execute(
        delete(IdempotencyKey)
        .where(IdempotencyKey.owner == _owner(owner), IdempotencyKey.key == key, IdempotencyKey.created_at < expired)
        .execution_options(synchronize_session=False)
    )
    session.add(IdempotencyKey(owner=_owner(owner), key=key, task_uid=uid, model_hid=hid))
    session.flush()
