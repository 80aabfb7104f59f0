"""The Litestar application: routes, lifespan (pool + long-poll hub), auth, errors, OpenAPI.

Layout: ``jobs.py`` (caller-facing), ``workers.py`` (claim/heartbeat/complete/fail), ``stats.py``,
``health.py`` (open probes); ``auth.py`` guards everything under ``/api/v1``; ``errors.py`` maps
every exception to one error shape; ``hub.py`` owns the process's single LISTEN connection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from service import metrics
from service.api import jobs, stats, status, workers
from service.api.auth import bearer_guard
from service.api.bodygate import body_gate_of
from service.api.deps import DEPENDENCIES
from service.api.errors import handle_exception
from service.api.health import healthz, readyz
from service.api.hub import NotifyHub
from service.api.media import json_body_guard
from service.api.otel import server_span_plugins
from service.config import Settings
from service.db import open_database
from service.handlers.base import CATEGORIES
from service.handlers.llm_input import LLM_TASK_TYPES
from service.handlers.transcription_input import TRANSCRIPTION_TASK_TYPES
from service.jobs import JobRepository
from service.jobs.reaper import Reaper
from service.jobs.stats import StatsRepository
from service.metrics.export import metrics_enabled, metrics_routes
from service.metrics.queue import sample_queue
from service.providers.status import ProviderStatusBoard

log = logging.getLogger("ai_service.api")

API_PREFIX = "/api/v1"
SECURITY_SCHEME = "BearerToken"


def api_router(settings: Settings, extra_routes: Sequence[Any] = ()) -> Router:
    """Every ``/api/v1`` route behind the bearer guard. Other packages (providers/infra status)
    pass their handlers through ``extra_routes`` so they share the guard and the prefix."""
    return Router(
        path=API_PREFIX,
        route_handlers=[
            *jobs.ROUTES,
            *workers.ROUTES,
            *stats.ROUTES,
            *status.ROUTES,
            *extra_routes,
        ],
        guards=[bearer_guard(settings.tokens, required=settings.auth_required), json_body_guard],
        security=[{SECURITY_SCHEME: []}] if settings.auth_required else None,
    )


def create_app(
    settings: Settings, *, database_url: str, extra_routes: Sequence[Any] = ()
) -> Litestar:
    """Build the API. The pool opens at startup so a bad URL fails the process, not a request."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        db = await open_database(
            database_url,
            max_size=settings.db_pool_size,
            timeout=settings.db_pool_timeout,
            statement_timeout=settings.db_statement_timeout,
        )
        if not settings.auth_required:  # the seed's default, kept; said once, loudly
            log.warning(
                "AI_SERVICE_TOKEN is not set: /api/v1 accepts requests without a token "
                "(any caller that reaches the port can submit, cancel and read jobs)"
            )
        try:
            hub = NotifyHub(database_url)
            app.state.db = db
            repo = app.state.repo = JobRepository(
                db,
                default_max_attempts=settings.job_max_attempts,
                backoff_base=settings.retry_backoff_base,
                backoff_max=settings.retry_backoff_max,
            )
            # Leases granted here (external workers) come back when their holder dies, even
            # with no ai-service worker running; one reaper at a time across all processes.
            reaper = app.state.reaper = Reaper(
                repo,
                lease_seconds=settings.worker_lease_timeout,
                retention=settings.job_retention,
            )
            app.state.stats = StatsRepository(db)
            app.state.hub = hub
            app.state.settings = settings
            app.state.provider_board = ProviderStatusBoard.from_settings(settings)
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run)
                tg.start_soon(reaper.run)
                if metrics_enabled():
                    metrics.queue_sample.expect(served_profiles(settings))
                    metrics.labels.task_types.allow(BUILTIN_TASK_TYPES)
                    metrics.labels.error_categories.allow(CATEGORIES)
                    tg.start_soon(sample_queue, db)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            board = getattr(app.state, "provider_board", None)
            if board is not None:
                await board.aclose()
            await db.close()

    openapi = OpenAPIConfig(
        title="ai-service",
        version="1",
        description="Shared AI job service: submit jobs, claim them as a worker, read results.",
        path="/schema",
        components=Components(
            security_schemes={
                SECURITY_SCHEME: SecurityScheme(
                    type="http", scheme="bearer", description="AI_SERVICE_TOKEN"
                )
            }
        ),
    )
    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            *metrics_routes(settings),
            api_router(settings, extra_routes),
        ],
        dependencies=DEPENDENCIES,
        exception_handlers={Exception: handle_exception},
        request_max_body_size=settings.max_request_bytes,
        # a burst of large batches waits its turn instead of an OOM kill
        middleware=[body_gate_of(settings)],
        openapi_config=openapi,
        lifespan=[lifespan],
        # Logging is set up once per process (service/logs.py); Litestar's default config
        # would replace the root handler and turn JSON lines into its own plain format.
        logging_config=None,
        plugins=server_span_plugins(),
        debug=False,
    )


def close_long_polls(app: Litestar) -> None:
    """For ``make_server(on_shutdown=...)``: waiting long-polls answer now (see the hub)."""
    hub: NotifyHub | None = getattr(app.state, "hub", None)
    if hub is not None:
        hub.close_waiters()


BUILTIN_TASK_TYPES = (*LLM_TASK_TYPES, *TRANSCRIPTION_TASK_TYPES)


def served_profiles(settings: Settings) -> list[str]:
    """The profiles this deployment serves: ``WORKER_PROFILES``, else the built-in ones."""
    from service.handlers.transcription_input import TRANSCRIPTION_PROFILE

    return list(settings.worker_profiles) or [settings.llm_model, TRANSCRIPTION_PROFILE]
