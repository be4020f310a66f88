"""The audit trail: who (key id and name) created, changed, deleted or cancelled what, and when."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from private_api.auth import Caller
from private_api.orm import AuditEntry

__all__ = ["record"]


def record(session: Session, caller: Caller, action: str, target: str, **detail: Any) -> None:
    """Append one row to the caller's transaction (committed with the change it describes, never on its own).

    action: key.create, key.revoke, key.rotate, model.create, model.update, model.delete, task.create, task.cancel.
    """
    session.add(
        AuditEntry(
            key_id=caller.key_id,
            key_name=caller.key_name,
            action=action,
            target=target[:256],
            detail=json.dumps(detail, default=str, sort_keys=True),
        )
    )
