"""Liveness and readiness for compose healthchecks."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from private_api import crud
from private_api.deps import PublisherDep, SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(session: SessionDep, publisher: PublisherDep) -> JSONResponse:
    """200 while the database answers (tasks are accepted even while the broker is away); 503 otherwise."""
    try:
        session.execute(text("SELECT 1"))
        unpublished = crud.count_unpublished(session)
        database = "ok"
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "database": f"error: {exc}"}, status_code=503)
    broker = "connected" if publisher.connected else f"disconnected ({publisher.last_error})"
    status = "ok" if publisher.connected else "degraded"
    return JSONResponse({"status": status, "database": database, "broker": broker, "unpublished": unpublished})
