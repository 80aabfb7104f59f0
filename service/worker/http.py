"""The worker's own HTTP endpoints on ``WORKER_HTTP_HOST:WORKER_HTTP_PORT`` (open, for probes):

- ``GET /healthz``: the process serves HTTP.
- ``GET /readyz``: PostgreSQL answers and the listener is connected (503 otherwise, and while
  draining), so a worker that cannot hear NOTIFY is visibly degraded. Both answer HEAD too.
- ``GET /worker/status``: worker_id, per-profile capacity and counters, listener state, last
  notification time, uptime, version.
- ``GET /metrics``: Prometheus text, when METRICS_PORT is set (``extra_routes``).

Errors (an unknown path or method, a failing probe) have the API's shape,
``{"error": code, "detail": sentence}``, so one client-side parser reads both ports. The API's
helpers are not imported for it: ``api/`` and ``worker/`` never import each other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import uvicorn
from litestar import Litestar, Request, Response, get, route
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException

from service.http_limits import STATUS_CODES, BoundedHttpToolsProtocol
from service.serve import PROBE_METHODS, EmbeddedServer
from service.worker.status import WorkerStatus

log = logging.getLogger("ai_service.worker.http")


class Observable(Protocol):
    status: WorkerStatus

    async def readiness(self) -> tuple[bool, dict[str, Any]]: ...


def _error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """The one exception handler: the same codes and sentences the API uses."""
    path = request.url.path
    if isinstance(exc, NotFoundException):
        code, status, detail = "not_found", 404, f"no route or resource at {path}"
    elif isinstance(exc, MethodNotAllowedException):
        code, status = "method_not_allowed", 405
        detail = f"{request.method} is not allowed on {path}"
    elif isinstance(exc, HTTPException) and exc.status_code < 500:
        status, detail = exc.status_code, exc.detail
        code = STATUS_CODES.get(status, "http_error")  # the API's codes
    else:
        log.error("unhandled error on %s %s", request.method, path, exc_info=exc)
        code, status, detail = "internal_error", 500, "an internal error occurred; it was logged"
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return Response({"error": code, "detail": detail}, status_code=status, headers=headers)


def create_worker_app(worker: Observable, extra_routes: Sequence[Any] = ()) -> Litestar:
    @route("/healthz", http_method=PROBE_METHODS, summary="Process health")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @route("/readyz", http_method=PROBE_METHODS, summary="Database and listener readiness")
    async def readyz() -> Response[dict[str, Any]]:
        ready, body = await worker.readiness()
        return Response(body, status_code=200 if ready else 503)

    @get("/worker/status", summary="Worker identity, capacity, counters and listener state")
    async def worker_status() -> dict[str, Any]:
        return worker.status.snapshot()

    # logging_config=None: Litestar's default would reconfigure the root logger (our JSON lines)
    return Litestar(
        route_handlers=[healthz, readyz, worker_status, *extra_routes],
        exception_handlers={Exception: _error},
        logging_config=None,
        openapi_config=None,  # probes and status: no /schema on the worker port
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
        log_config=None,  # its lines go through our handlers (service/serve.py)
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=2,
        http=BoundedHttpToolsProtocol,  # the port is open to probes: bound what it holds
    )
    return EmbeddedServer(config)
