"""Server spans for the API: Litestar's OpenTelemetry plugin, only when tracing is on.

Why these options: credentials must never reach a span, whatever
``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` says, so the sanitize list is fixed here;
the per-message ASGI ``receive``/``send`` spans add cost and nothing an operator reads; probes
and scrapes would drown the traces that matter.

Why spans are named after routing: Litestar names the span (and sets ``http.route``) from the
raw path before the router runs, so every job id made a span name of its own (``GET
/api/v1/jobs/<uuid>``), unbounded for Tempo's span metrics and useless for grouping. The span
starts named ``{method}`` (the semantic conventions' name when no route is known: a 404);
when the response starts, routing is done and ``name_after_route`` renames it ``{method}
{template}`` and sets ``http.route`` to the template. The template also goes to the HTTP
server metrics as ``http.target`` (the ASGI instrumentation reads it from ``scope["route"]``,
its hook for frameworks). Which attributes those metrics keep is decided where the
MeterProvider is built (``service.metrics.export``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.config.app import AppConfig
from litestar.enums import ScopeType
from litestar.plugins import InitPlugin, PluginProtocol
from litestar.types import Message, Scope
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from service import telemetry

SANITIZED_HEADERS = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"]
UNTRACED_PATHS = ["^/healthz$", "^/readyz$", "^/metrics$"]
# Methods as the HTTP conventions name spans; any other is "HTTP" (a method is client input).
KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY")
)


def server_span_plugins() -> list[PluginProtocol]:
    if not telemetry.enabled():
        return []  # no middleware at all: requests pay nothing for tracing
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    config = OpenTelemetryConfig(
        exclude=UNTRACED_PATHS,
        exclude_spans=["receive", "send"],
        http_capture_headers_sanitize_fields=SANITIZED_HEADERS,
        scope_span_details_extractor=span_details,
    )
    return [OpenTelemetryPlugin(config), RouteSpanNames()]


def _method(scope: Scope) -> str:
    method = str(scope.get("method", "")).upper()
    return method if method in KNOWN_METHODS else "HTTP"


def span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The server span's name before routing: the method alone, and no ``http.route``."""
    return (_method(scope), {}) if scope["type"] == ScopeType.HTTP else ("websocket", {})


@dataclass(frozen=True)
class _Route:
    path_format: str  # what the ASGI instrumentation reads from scope["route"]


async def name_after_route(message: Message, scope: Scope) -> None:
    """A ``before_send`` hook: at the response's start, name the server span after the route
    template Litestar's router stored in the scope (absent when no route matched)."""
    if message["type"] != "http.response.start":
        return
    template = scope.get("path_template")
    if not template:
        return  # no route matched (404, 405): the method alone stays the name
    scope_dict: dict[str, Any] = scope  # type: ignore[assignment]
    scope_dict["route"] = _Route(template)  # for the metrics, sampled or not
    span = trace.get_current_span()
    if not span.is_recording() or getattr(span, "kind", None) is not SpanKind.SERVER:
        return  # sampled out, untraced path, or (never expected) another span current
    route = f"{scope.get('root_path', '')}{template}"
    span.update_name(f"{_method(scope)} {route}")
    span.set_attribute("http.route", route)


class RouteSpanNames(InitPlugin):
    """Installs ``name_after_route`` (a second plugin: Litestar looks the OpenTelemetry plugin
    up by its class name, so that one cannot be subclassed)."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.before_send.append(name_after_route)
        return app_config
