"""Kubernetes probes: ``/healthz`` says the process serves HTTP, ``/readyz`` that it can reach
PostgreSQL. Both stay open (no token) so probes work whatever AI_SERVICE_TOKEN is; so a 503
has the API's error shape and names no host, user or driver message (those are logged)."""

from __future__ import annotations

import logging
from functools import partial

from litestar import Response, route
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from service.db import Database, DatabaseUnavailable
from service.logs import ReadinessLog, reason
from service.serve import PROBE_METHODS

log = logging.getLogger("ai_service.api.health")


def _readiness_log(state: State) -> ReadinessLog:
    """The app's own (a process may serve more than one app, as the tests do)."""
    found: ReadinessLog | None = getattr(state, "readiness_log", None)
    if found is None:
        found = state.readiness_log = ReadinessLog(log)
    return found


# GET and HEAD, open (no token), tagged for the OpenAPI document.
probe = partial(route, http_method=PROBE_METHODS, opt={"public": True}, tags=["health"])


@probe("/healthz", summary="Process health")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@probe(
    "/readyz",
    summary="PostgreSQL readiness",
    responses={
        503: ResponseSpec(
            data_container=dict[str, str],
            generate_examples=False,
            description="PostgreSQL is not reachable (error, detail, status, database)",
        )
    },
)
async def readyz(state: State) -> Response[dict[str, str]]:
    db: Database = state.db
    try:
        await db.ping()
    except DatabaseUnavailable as exc:
        _readiness_log(state).not_ready(f"PostgreSQL is not reachable: {reason(exc)}")
        body = {"error": "database_unavailable", "detail": "PostgreSQL is not reachable",
                "status": "unavailable", "database": "unavailable"}  # fmt: skip
        return Response(body, status_code=503)
    _readiness_log(state).ready()
    return Response({"status": "ok", "database": "ok"})
