"""Server spans for the API: Litestar's OpenTelemetry plugin, only when tracing is on.

Why these options: credentials must never reach a span, whatever
``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` says, so the sanitize list is fixed here;
the per-message ASGI ``receive``/``send`` spans add cost and nothing an operator reads; probes
and scrapes would drown the traces that matter.
"""

from __future__ import annotations

from litestar.plugins import PluginProtocol

from service import telemetry

SANITIZED_HEADERS = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"]
UNTRACED_PATHS = ["^/healthz$", "^/readyz$", "^/metrics$"]


def server_span_plugins() -> list[PluginProtocol]:
    if not telemetry.enabled():
        return []  # no middleware at all: requests pay nothing for tracing
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    config = OpenTelemetryConfig(
        exclude=UNTRACED_PATHS,
        exclude_spans=["receive", "send"],
        http_capture_headers_sanitize_fields=SANITIZED_HEADERS,
    )
    return [OpenTelemetryPlugin(config)]
