"""The private API application: create_app() wires settings, database, storage and the outbox publisher."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import event
from starlette.concurrency import run_in_threadpool

from common.http import StripTrailingSlash
from private_api.auth import Keyring
from private_api.config import Settings, get_settings
from private_api.db import make_engine, make_sessionmaker, migrate
from private_api.errors import install_handlers
from private_api.leases import LeaseRule
from private_api.metrics import make_registry
from private_api.orm import utcnow
from private_api.publisher import Publisher
from private_api.retention import Sweeper, retention_of
from private_api.routes import audit, consumer, consumers, health, keys, metrics, models, submit, tasks, webhooks
from private_api.storage import Storage
from private_api.watching import Watcher

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A private API app; nothing connects until it starts."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        await run_in_threadpool(migrate, engine)
        app.state.settings = settings
        app.state.storage = Storage(settings.data_dir, min_free_bytes=settings.min_free_disk_bytes)
        app.state.storage.clean_temp(idle_seconds=2 * settings.upload_idle_timeout_seconds)
        app.state.engine = engine
        app.state.sessions = make_sessionmaker(engine)
        app.state.keyring = Keyring(engine, settings)
        app.state.metrics = make_registry(
            app.state.sessions, stale_seconds=settings.consumer_stale_seconds, data_dir=settings.data_dir
        )
        # Leases count from this start at the earliest: every holder gets a full lease to check in.
        app.state.lease_rule = LeaseRule(seconds=settings.lease_seconds, since=utcnow())
        app.state.publisher = Publisher(
            url=settings.rabbitmq_url,
            sessions=app.state.sessions,
            interval=settings.outbox_interval_seconds,
            republish_after=settings.republish_after_seconds,
            lease_rule=app.state.lease_rule,
            max_attempts=settings.max_attempts,
        )
        app.state.publisher.start()
        app.state.publisher.wake()
        app.state.sweeper = Sweeper(
            sessions=app.state.sessions,
            storage=app.state.storage,
            retention=retention_of(settings),
            interval=settings.retention_interval_seconds,
        )
        app.state.sweeper.start()
        app.state.watcher = Watcher(engine, interval=settings.wait_interval_seconds)
        app.state.watcher.start()
        # Every commit of this process may have changed a watched task: its waiters are answered at once.
        event.listen(app.state.sessions, "after_commit", lambda _session: app.state.watcher.poke())
        log.info("private API ready (database %s)", engine.url.render_as_string(hide_password=True))
        try:
            yield
        finally:
            await app.state.watcher.stop()
            app.state.sweeper.stop()
            app.state.publisher.stop()
            engine.dispose()

    app = FastAPI(
        title="InferenceServer private API",
        description="Models, tasks, files and the queue. Internal network only; calls need X-Internal-Token.",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    install_handlers(app)
    routers = (models, submit, tasks, keys, audit, consumer, consumers, health, metrics, webhooks)
    for router in routers:
        app.include_router(router.router)
    app.add_middleware(StripTrailingSlash)
    return app
