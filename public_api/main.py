"""The public API application: settings, the pooled client's lifespan, routes, error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from public_api.config import Settings, get_settings
from public_api.deps import ClientDep
from public_api.errors import install_handlers
from public_api.fast_path import FastRelay
from public_api.private_client import create_client, probe
from public_api.routes import router

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """A public API app; settings from the environment unless given."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with create_client(settings) as client:
            app.state.client = client
            yield

    app = FastAPI(
        title="InferenceServer public API",
        description="Post a model's input as a zip, poll the task, fetch the output zip.",
        version="0.1.0",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.settings = settings
    install_handlers(app)
    app.include_router(router)
    app.add_middleware(FastRelay)

    @app.get("/healthz", summary="Liveness; reports whether the private API answers")
    async def healthz(client: ClientDep) -> dict[str, str]:
        """200 while this process serves; `private_api` says whether the relay's upstream answers."""
        return {"status": "ok", "private_api": await probe(client)}

    return app
