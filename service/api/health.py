"""Kubernetes probes: ``/healthz`` says the process serves HTTP, ``/readyz`` that it can reach
PostgreSQL. Both stay open (no token) so probes work whatever AI_SERVICE_TOKEN is."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from service.db import Database, DatabaseUnavailable


@get("/healthz", opt={"public": True}, tags=["health"], summary="Process health")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", opt={"public": True}, tags=["health"], summary="PostgreSQL readiness")
async def readyz(state: State) -> Response[dict[str, str]]:
    db: Database = state.db
    try:
        await db.ping()
    except DatabaseUnavailable as exc:
        return Response({"status": "unavailable", "database": str(exc)}, status_code=503)
    return Response({"status": "ok", "database": "ok"})
