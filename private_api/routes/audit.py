"""The audit trail: who created, changed, deleted or cancelled what, and when (admin keys only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from common.openapi import answers
from common.schemas import MAX_OFFSET, MAX_PAGE, AuditPage
from private_api import crud_audit
from private_api.auth import AdminDep
from private_api.deps import InternalAuth, SessionDep

router = APIRouter(prefix="/api/audit", tags=["audit"], dependencies=[InternalAuth])


@router.get("", response_model=AuditPage, responses=answers(401, 403, 422))
def list_audit(
    session: SessionDep,
    _admin: AdminDep,
    action: Annotated[str | None, Query(max_length=64, description="e.g. model.update, task.cancel")] = None,
    key_id: Annotated[str | None, Query(max_length=128, description="rows of this API key only")] = None,
    target: Annotated[str | None, Query(max_length=256, description="a key id, model id or task uid")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AuditPage:
    """Audit rows, newest first, filtered by action, key and target."""
    rows, total = crud_audit.list_audit(
        session, action=action, key_id=key_id, target=target, limit=limit, offset=offset
    )
    return AuditPage(items=[crud_audit.audit_out(row) for row in rows], total=total)
