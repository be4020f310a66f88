"""The public API application: settings, the pooled clients' lifespan, routes, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.schemas import ServiceInfo, package_version
from public_api.config import Settings, get_settings
from public_api.deps import UpstreamDep
from public_api.errors import install_handlers
from public_api.private_client import open_upstream, probe
from public_api.routes import add_routes

__all__ = ["create_app"]

TITLE = "InferenceServer public API"


def create_app(settings: Settings | None = None) -> FastAPI:
    """A public API app; settings from the environment unless given."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_upstream(settings) as upstream:
            app.state.upstream = upstream
            yield

    app = FastAPI(
        title=TITLE,
        description="Post a model's input as a zip, poll the task, fetch the output zip.",
        version=package_version(),
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.settings = settings
    install_handlers(app)
    add_routes(app)

    @app.get("/", summary="Which service this is, its version, where its docs are")
    async def root() -> ServiceInfo:
        """What clients of the original server call as a hello-world check."""
        return ServiceInfo(name=TITLE, version=app.version, docs=app.docs_url or "/docs")

    @app.get("/healthz", summary="Liveness; reports whether the private API answers")
    async def healthz(upstream: UpstreamDep) -> dict[str, str]:
        """200 while this process serves; `private_api` says whether the relay's upstream answers."""
        return {"status": "ok", "private_api": await probe(upstream)}

    return app
