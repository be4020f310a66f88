"""Liveness and readiness for compose healthchecks, and what an operator should know about the consumers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from common.schemas import ServiceInfo, package_version
from private_api import crud, crud_consumers
from private_api.deps import PublisherDep, SessionDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/", response_model=ServiceInfo)
def root() -> ServiceInfo:
    """Which service answers, its version and where its documentation is (clients of the original server call it)."""
    return ServiceInfo(name="InferenceServer private API", version=package_version())


@router.get("/healthz")
def healthz(session: SessionDep, publisher: PublisherDep, settings: SettingsDep) -> JSONResponse:
    """200 while the database answers (tasks are accepted even while the broker is away); 503 otherwise.

    Also lists the consumer instances, the live consumers per queue and warnings (a queue nobody reads while tasks
    wait, a GPU that cannot be used); warnings do not make the service unhealthy.
    """
    try:
        session.execute(text("SELECT 1"))
        unpublished = crud.count_unpublished(session)
        consumers, queues, warnings = crud_consumers.health(session, stale_seconds=settings.consumer_stale_seconds)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "database": f"error: {exc}"}, status_code=503)
    broker = "connected" if publisher.connected else f"disconnected ({publisher.last_error})"
    status = "ok" if publisher.connected else "degraded"
    body = {
        "status": status,
        "database": "ok",
        "broker": broker,
        "unpublished": unpublished,
        "consumers": [c.model_dump(mode="json") for c in consumers],
        "queues": queues,
        "warnings": warnings,
    }
    return JSONResponse(body)
