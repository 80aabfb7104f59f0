"""The Litestar application: routes, lifespan (database pool), error mapping, OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from service.api.health import healthz, readyz
from service.config import Settings
from service.db import open_database
from service.jobs import JobRepository


def create_app(settings: Settings, *, database_url: str) -> Litestar:
    """Build the API. The pool opens at startup so a bad URL fails the process, not a request."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        db = await open_database(database_url, max_size=settings.db_pool_size)
        app.state.db = db
        app.state.repo = JobRepository(
            db,
            default_max_attempts=settings.job_max_attempts,
            backoff_base=settings.retry_backoff_base,
            backoff_max=settings.retry_backoff_max,
        )
        app.state.settings = settings
        try:
            yield
        finally:
            await db.close()

    return Litestar(route_handlers=[healthz, readyz], lifespan=[lifespan], debug=False)
