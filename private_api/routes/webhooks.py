"""Calls of the webhook sender (`python -m webhooks`): take due deliveries, report each attempt's outcome."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from private_api import crud_webhooks
from private_api.config import Settings
from private_api.deps import InternalAuth, InternalTaskUid, SessionDep, SettingsDep

router = APIRouter(prefix="/internal/webhooks", tags=["webhooks"], dependencies=[InternalAuth])


class ResultIn(BaseModel):
    """How one attempt went."""

    attempt: int = Field(ge=1)
    ok: bool
    error: str | None = Field(default=None, max_length=10_000)
    # A refusal (host not allowed, internal address): trying again would not help.
    permanent: bool = False


def policy(settings: Settings) -> crud_webhooks.RetryPolicy:
    """The retry policy of WEBHOOK_* settings."""
    return crud_webhooks.RetryPolicy(
        backoff_seconds=settings.webhook_backoff_seconds,
        backoff_max_seconds=settings.webhook_backoff_max_seconds,
        give_up_seconds=settings.webhook_give_up_seconds,
        lease_seconds=settings.webhook_lease_seconds,
    )


@router.post("/due")
def due(
    session: SessionDep, settings: SettingsDep, limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> list[dict[str, Any]]:
    """Deliveries due now, leased to the caller: uid, url, attempt and the status JSON to send."""
    return crud_webhooks.due(session, limit=limit, policy=policy(settings))


@router.post("/{uid}/result")
def result(uid: InternalTaskUid, body: ResultIn, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Store an attempt's outcome; answers the task's webhook state (409 for an attempt not leased)."""
    return crud_webhooks.record_result(
        session,
        uid=uid,
        attempt=body.attempt,
        ok=body.ok,
        error=body.error,
        permanent=body.permanent,
        policy=policy(settings),
    )
