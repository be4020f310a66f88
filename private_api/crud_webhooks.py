"""Webhook deliveries, as the tasks table keeps them: due ones leased to a sender, outcomes, the state users see.

A task submitted with a `callback_url` gets `webhook_state` "pending" and `webhook_next_at` its submission time;
its delivery is due from the moment the task has ended (finished, failed or cancelled, whichever way it ended). A
sender leases due deliveries for `lease_seconds` (a sender that dies mid-send leaves them due again) and reports
each attempt: delivered; or failed and due again after a backoff; or "failed" for good once the next try would
fall past `give_up_seconds` after the task ended, or at once for a URL or address the sender refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.schemas import FINAL_STATES
from private_api import crud
from private_api.errors import Conflict, UnknownTask
from private_api.orm import Task, utcnow

__all__ = ["RetryPolicy", "due", "record_result"]

_ERROR_LENGTH = 1000


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between attempts (doubling from `backoff_seconds` up to `backoff_max_seconds`) and when to stop."""

    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 3600.0
    give_up_seconds: float = 86400.0
    lease_seconds: float = 60.0

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones."""
        return min(self.backoff_seconds * 2 ** max(attempts - 1, 0), self.backoff_max_seconds)


def due(session: Session, *, limit: int, policy: RetryPolicy) -> list[dict[str, Any]]:
    """Lease up to `limit` due deliveries: uid, url, attempt (the number of this try) and the status JSON to send."""
    now = utcnow()
    is_due = (
        Task.webhook_state == "pending",
        Task.status.in_(FINAL_STATES),
        Task.webhook_next_at <= now,  # set at submission: the index on it finds the few due ones
    )
    query = select(Task).where(*is_due).order_by(Task.finished_at, Task.id).limit(limit)
    leased = []
    for task in list(session.scalars(query)):
        # Compare-and-set: of two senders asking at once, one gets each delivery.
        taken = session.execute(
            update(Task)
            .where(Task.id == task.id, Task.webhook_attempts == task.webhook_attempts, *is_due)
            .values(webhook_next_at=now + timedelta(seconds=policy.lease_seconds))
            .execution_options(synchronize_session=False)
        )
        if int(taken.rowcount) != 1:  # type: ignore[attr-defined]
            continue
        status = crud.task_out(task).model_dump(mode="json")
        leased.append(
            {"uid": task.uid, "url": task.callback_url, "attempt": (task.webhook_attempts or 0) + 1, "status": status}
        )
    session.commit()
    return leased


def record_result(
    session: Session, *, uid: str, attempt: int, ok: bool, error: str | None, permanent: bool, policy: RetryPolicy
) -> dict[str, Any]:
    """Store how attempt `attempt` went; Conflict when it is not the attempt that was leased (a late report)."""
    task = session.scalar(select(Task).where(Task.uid == uid))
    if task is None or not task.callback_url:
        raise UnknownTask(f"no webhook for task {uid!r}")
    if task.webhook_state != "pending" or (task.webhook_attempts or 0) != attempt - 1:
        raise Conflict(f"attempt {attempt} is not the one leased (state {task.webhook_state})")
    now = utcnow()
    values: dict[str, Any] = {"webhook_attempts": attempt}
    if ok:
        values.update(webhook_state="delivered", webhook_delivered_at=now, webhook_next_at=None)
    else:
        ended = task.finished_at or task.created_at
        next_at = now + timedelta(seconds=policy.delay(attempt))
        give_up = permanent or next_at > ended + timedelta(seconds=policy.give_up_seconds)
        values.update(
            webhook_last_error=(error or "failed")[:_ERROR_LENGTH],
            webhook_state="failed" if give_up else "pending",
            webhook_next_at=None if give_up else next_at,
        )
    changed = session.execute(
        update(Task)
        .where(Task.id == task.id, Task.webhook_state == "pending", Task.webhook_attempts == attempt - 1)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if int(changed.rowcount) != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise Conflict(f"attempt {attempt} was reported already")
    session.commit()
    session.refresh(task)
    return crud.webhook_out(task) or {}
