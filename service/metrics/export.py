"""Where the metrics go: a MeterProvider from the standard ``OTEL_*`` variables, plus
Prometheus text at ``/metrics`` when ``METRICS_PORT`` is set.

- OTLP: when ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
  (``OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL`` grpc | http/protobuf, ``OTEL_METRICS_EXPORTER=none``
  turns it off, ``OTEL_METRIC_EXPORT_INTERVAL`` is read by the SDK).
- Prometheus (``METRICS_PORT`` set): the API and the worker HTTP servers serve ``GET /metrics``
  (unauthenticated, like ``/healthz``); when ``METRICS_PORT`` is not already one of this
  process's server ports, a small listener of its own serves it there too (``0``: none), so a
  pod can keep metrics off its public port. One registry per process: ``ai-service dev`` runs
  the API and a worker in one process and shows the same numbers on both.
- Neither, or ``OTEL_SDK_DISABLED=true``: no provider is installed and the instruments stay
  the API's no-ops.

Why a view on ``http.server.*``: the HTTP server metrics of the API's OpenTelemetry middleware
carry the client's ``Host`` header (``http.server_name``) and the server's address and port,
recorded before any auth, so any caller could create series without bound. Only bounded
attributes are kept: method, scheme, status code, ``error.type`` (a status code or an exception
class) and the route template (``http.target``, which ``service.api.otel`` sets from the route
for sampled and unsampled requests alike; under ``OTEL_SEMCONV_STABILITY_OPT_IN=http`` the
instrumentation takes the route before routing and the metrics carry none).

The provider is installed once per process (OpenTelemetry refuses a second global provider);
later calls only add the listener their role needs. ``shutdown_metrics`` flushes, bounded.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from litestar import Request, Response, get
from opentelemetry import metrics as otel
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.exposition import choose_encoder

from service import telemetry
from service.config import ConfigError, Settings

# prometheus-client names it CONTENT_TYPE_PLAIN_0_0_4 only from 0.23 (we accept 0.20).
TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger("ai_service.metrics")

SHUTDOWN_TIMEOUT_S = 5.0

HTTP_SERVER_METRICS = "http.server.*"
HTTP_SERVER_ATTRIBUTES = frozenset(
    {
        *("http.method", "http.scheme", "http.status_code", "http.target"),  # old conventions
        *("http.request.method", "url.scheme", "http.response.status_code", "http.route"),
        "error.type",
    }
)

_provider: Any = None
_listening: set[int] = set()


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _otlp_reader() -> Any:
    if _env("OTEL_METRICS_EXPORTER").lower() == "none":
        return None
    if not (_env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    exporter: Any
    if telemetry.otlp_protocol(os.environ, "METRICS") == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        exporter = GrpcExporter()
    return PeriodicExportingMetricReader(exporter)


def _server_ports(role: str, settings: Settings) -> list[tuple[int, str]]:
    """(port, host) of the HTTP servers ``role`` runs in this process."""
    api = (settings.http_port, settings.http_host)
    worker = (settings.worker_http_port, settings.worker_http_host)
    return {"api": [api], "worker": [worker]}.get(role, [api, worker])


def setup_metrics(role: str, settings: Settings) -> bool:
    """Install the process's MeterProvider (once) for ``role`` (api | worker | dev); True
    when metrics are exported anywhere. Raises ``ConfigError`` if METRICS_PORT is taken."""
    global _provider
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return False
    if _provider is None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.view import View

        readers = [r for r in (_otlp_reader(),) if r is not None]
        if settings.metrics_port is not None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            readers.append(PrometheusMetricReader())
        if not readers:
            return False
        # shutdown_on_exit=False: shutdown_metrics() is bounded, the SDK's atexit hook is not.
        _provider = MeterProvider(
            metric_readers=readers,
            resource=telemetry.resource(role),
            shutdown_on_exit=False,
            views=[
                View(
                    instrument_name=HTTP_SERVER_METRICS, attribute_keys=set(HTTP_SERVER_ATTRIBUTES)
                )
            ],
        )
        otel.set_meter_provider(_provider)
    _listen(role, settings)
    return True


def metrics_enabled() -> bool:
    return _provider is not None


def shutdown_metrics() -> None:
    """Export what is left (OTLP) within SHUTDOWN_TIMEOUT_S; a dead collector cannot hold us."""
    if _provider is not None:
        try:
            _provider.shutdown(timeout_millis=SHUTDOWN_TIMEOUT_S * 1000)
        except Exception:
            log.warning("metrics shutdown failed", exc_info=True)


def _listen(role: str, settings: Settings) -> None:
    port = settings.metrics_port
    servers = _server_ports(role, settings)
    if not port or port in _listening or port in {p for p, _ in servers}:
        return
    host = servers[0][1]
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"METRICS_PORT={port} is invalid: cannot listen on it ({exc})") from exc
    _listening.add(port)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)


@get(
    "/metrics",
    opt={"public": True},
    tags=["health"],
    summary="Prometheus metrics (text format)",
    media_type=TEXT_0_0_4,
    sync_to_thread=False,
)
def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The format the scraper's ``Accept`` asks for, as the dedicated listener answers it
    (OpenMetrics, text 1.0.0, else text 0.0.4). The content type goes in as a header: as a
    media type, Litestar appends its own charset to the one it already has, and Prometheus 3
    refuses a content type with a parameter twice."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), headers={"content-type": content_type})


def metrics_routes(settings: Settings) -> list[Any]:
    """``[GET /metrics]`` when METRICS_PORT is set, else nothing (for the apps' route lists)."""
    return [metrics_endpoint] if settings.metrics_port is not None else []
