"""Reading the audit trail (rows are written by private_api/audit.record, inside the change they describe)."""

from __future__ import annotations

import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.schemas import AuditOut
from private_api.orm import AuditEntry

__all__ = ["audit_out", "list_audit"]


def list_audit(
    session: Session,
    *,
    action: str | None = None,
    key_id: str | None = None,
    target: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AuditEntry], int]:
    """A page of audit rows, newest first, and how many match in all."""
    query = select(AuditEntry)
    if action:
        query = query.where(AuditEntry.action == action)
    if key_id:
        query = query.where(AuditEntry.key_id == key_id)
    if target:
        query = query.where(AuditEntry.target == target)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit).offset(offset))
    return list(rows), int(total)


def audit_out(entry: AuditEntry) -> AuditOut:
    """An audit row as the API shows it (a detail that is not a JSON object is shown under `value`)."""
    try:
        detail = json.loads(entry.detail or "{}")
    except ValueError:
        detail = {"value": entry.detail}
    return AuditOut(
        id=entry.id,
        at=entry.at,
        key_id=entry.key_id,
        key_name=entry.key_name,
        action=entry.action,
        target=entry.target,
        detail=detail if isinstance(detail, dict) else {"value": detail},
    )
