"""The worker's own HTTP endpoints on ``WORKER_HTTP_HOST:WORKER_HTTP_PORT`` (open, for probes):

- ``GET /healthz``: the process serves HTTP.
- ``GET /readyz``: PostgreSQL answers and the listener is connected (503 otherwise, and while
  draining), so a worker that cannot hear NOTIFY is visibly degraded.
- ``GET /worker/status``: worker_id, per-profile capacity and counters, listener state, last
  notification time, uptime, version.
- ``GET /metrics``: Prometheus text, when METRICS_PORT is set (``extra_routes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import uvicorn
from litestar import Litestar, Response, get

from service.serve import EmbeddedServer
from service.worker.status import WorkerStatus


class Observable(Protocol):
    status: WorkerStatus

    async def readiness(self) -> tuple[bool, dict[str, Any]]: ...


def create_worker_app(worker: Observable, extra_routes: Sequence[Any] = ()) -> Litestar:
    @get("/healthz", summary="Process health")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", summary="Database and listener readiness")
    async def readyz() -> Response[dict[str, Any]]:
        ready, body = await worker.readiness()
        return Response(body, status_code=200 if ready else 503)

    @get("/worker/status", summary="Worker identity, capacity, counters and listener state")
    async def worker_status() -> dict[str, Any]:
        return worker.status.snapshot()

    # logging_config=None: Litestar's default would reconfigure the root logger (our JSON lines)
    return Litestar(
        route_handlers=[healthz, readyz, worker_status, *extra_routes],
        logging_config=None,
        debug=False,
    )


def make_worker_server(
    worker: Observable, host: str, port: int, extra_routes: Sequence[Any] = ()
) -> EmbeddedServer:
    """Served in the worker's own task group (signals stay with the supervisor); no lifespan,
    so a hard exit does not leave a lifespan task to complain about its cancellation."""
    config = uvicorn.Config(
        create_worker_app(worker, extra_routes),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    return EmbeddedServer(config)
