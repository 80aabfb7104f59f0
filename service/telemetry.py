"""OpenTelemetry tracing set up from the standard ``OTEL_*`` variables, once per process.

Why nothing is installed without an endpoint: the OTel API then stays a no-op (spans are
non-recording, nothing is injected into ``trace_context``), so a service without a collector
pays nothing for the instrumentation in its code. With an endpoint, spans go through a
``BatchSpanProcessor``: ending a span only appends to an in-memory queue, and export happens
on the processor's thread, so a slow or dead collector drops spans rather than slowing jobs.

The exporter reads ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``/``HEADERS``/``TIMEOUT`` itself; the
``TracerProvider`` reads ``OTEL_TRACES_SAMPLER[_ARG]``; ``resource`` applies
``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` over our defaults. ``OTEL_TRACES_EXPORTER=none``
turns tracing off (any other value means OTLP, the only exporter here). Our two switches
(``OTEL_CAPTURE_CONTENT``, ``OTEL_INSTRUMENT_PSYCOPG``) are ordinary settings in
``service/config.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import unquote

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from service import spans
from service.config import ConfigError, Settings, hide_credentials

log = logging.getLogger("ai_service.telemetry")

SERVICE_NAMES = {"api": "ai-service-api", "worker": "ai-service-worker", "dev": "ai-service-dev"}
PROTOCOLS = ("grpc", "http/protobuf")
SHUTDOWN_TIMEOUT_S = 5.0

_provider: TracerProvider | None = None
_capture_content = False


def enabled() -> bool:
    """Whether this process exports spans (call sites skip building attributes otherwise)."""
    return _provider is not None


def capture_content() -> bool:
    """``OTEL_CAPTURE_CONTENT=true``: prompts and answers may be recorded on GenAI spans."""
    return _capture_content


def _true(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if value := env.get(name, "").strip():
            return value
    return None


def shown_endpoint(env: Mapping[str, str]) -> str:
    """The traces endpoint as a log line may show it: an endpoint may carry credentials
    (``https://user:pw@collector/…``, ``?api-key=…``), which the line would have quoted."""
    return hide_credentials(traces_endpoint(env) or "")


def otlp_protocol(env: Mapping[str, str], signal: str = "TRACES") -> str:
    """``OTEL_EXPORTER_OTLP_<signal>_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else grpc;
    anything else stops start-up (traces and metrics read it the same way)."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if value := env.get(name, "").strip().lower():
            if value not in PROTOCOLS:
                raise ConfigError(f"{name}={value!r} is invalid: expected grpc or http/protobuf")
            return value
    return "grpc"


# One per process: traces and metrics carry the same service.instance.id, so a trace's
# process can be found among the metric series (the Collector turns it into `instance`).
_INSTANCE_ID = str(uuid.uuid4())


def _version() -> str:
    try:
        return version("ai-service")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def resource_attributes(env: Mapping[str, str]) -> dict[str, str]:
    """What ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` say, parsed as the SDK's
    ``OTELResourceDetector`` parses them (comma-separated ``key=value``, values URL-decoded;
    the service name wins over a ``service.name`` in the list)."""
    out: dict[str, str] = {}
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    if name := env.get("OTEL_SERVICE_NAME", "").strip():
        out["service.name"] = name
    return out


def resource(role: str, env: Mapping[str, str] | None = None) -> Resource:
    """The process's identity for every signal: our defaults (``ai-service-<role>``, the
    package version, a per-process instance id), each overridden by what ``OTEL_SERVICE_NAME``
    / ``OTEL_RESOURCE_ATTRIBUTES`` set: the operator's word wins, as the variables specify.
    Why parsed here rather than left to ``Resource.create``: attributes passed to it override
    the environment's, which is the wrong way round for defaults."""
    env = os.environ if env is None else env
    defaults = {
        "service.name": SERVICE_NAMES.get(role, f"ai-service-{role}"),
        "service.version": _version(),
        "service.instance.id": _INSTANCE_ID,
    }
    given = resource_attributes(env)
    if not given.get("service.name"):  # "service.name=" names nothing
        given.pop("service.name", None)
    return Resource.create({**defaults, **given})


def _exporter(protocol: str) -> SpanExporter:
    from service import otlp  # imports gRPC: only when tracing is on

    return otlp.GrpcSpanExporter() if protocol == "grpc" else otlp.HttpSpanExporter()


def build_provider(role: str, env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """The provider ``setup`` would install, or ``None`` when tracing is off (no endpoint,
    ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``). Raises ``ConfigError`` for an
    unknown protocol."""
    env = os.environ if env is None else env
    if _true(env, "OTEL_SDK_DISABLED") or traces_endpoint(env) is None:
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    exporter = _exporter(otlp_protocol(env))
    # shutdown_on_exit=False: our shutdown() is bounded; the SDK's atexit hook may wait 30 s
    # on a dead collector.
    provider = TracerProvider(resource=resource(role, env), shutdown_on_exit=False)
    try:
        processor = BatchSpanProcessor(exporter)
    except ValueError as exc:  # OTEL_BSP_* values that contradict each other
        raise ConfigError(f"OTEL_BSP_* is invalid: {exc}") from None
    provider.add_span_processor(processor)
    return provider


DEFAULT_SPAN_QUEUE = 2048  # OTEL_BSP_MAX_QUEUE_SIZE's default in the SDK


def create_spans_warning(create_max: int, env: Mapping[str, str]) -> str | None:
    """Why ``OTEL_CREATE_SPANS_MAX_BATCH`` is too large for the span queue, if it is: a batch
    of that many jobs ends that many ``create`` spans at once, and spans past the queue's size
    are dropped (the jobs' ``process`` spans would then point at parents never exported)."""
    try:
        queue = int(env.get("OTEL_BSP_MAX_QUEUE_SIZE", "") or DEFAULT_SPAN_QUEUE)
    except ValueError:  # the SDK falls back to its default too
        queue = DEFAULT_SPAN_QUEUE
    if create_max < queue // 2:
        return None
    return (
        f"OTEL_CREATE_SPANS_MAX_BATCH={create_max} is not below half the span queue "
        f"(OTEL_BSP_MAX_QUEUE_SIZE={queue}): a batch that large can drop spans; lower it "
        "or raise the queue"
    )


def setup(role: str, settings: Settings) -> bool:
    """Install tracing for this process (``role`` is api, worker or dev); returns whether it
    is on. Call before any database connection is opened, so psycopg is instrumented."""
    global _provider, _capture_content
    if _provider is not None:
        return True
    provider = build_provider(role)
    if provider is None:
        return False
    trace.set_tracer_provider(provider)
    spans.install(provider)
    _provider = provider
    _capture_content = settings.otel_capture_content
    warning = create_spans_warning(settings.otel_create_spans_max_batch, os.environ)
    if warning and role != "worker":  # (only the API creates jobs)
        log.warning("%s", warning)
    if settings.otel_instrument_psycopg:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor().instrument(tracer_provider=ChildSpansOnly(provider))
    log.info(
        "tracing on: exporting to %s as %s",
        shown_endpoint(os.environ),
        provider.resource.attributes.get("service.name"),
    )
    return True


def shutdown(timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Flush queued spans and stop the exporter, waiting at most ``timeout`` seconds: a dead
    collector must not hold up a pod's exit (the spans are then lost, which is acceptable)."""
    global _provider
    provider, _provider = _provider, None
    if provider is None:
        return
    spans.install(None)
    thread = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        log.warning("tracing: spans not flushed within %gs; dropping them", timeout)


class ChildSpansOnly(trace.TracerProvider):
    """A provider whose tracers start spans only inside an existing span.

    Why: psycopg instrumentation would otherwise turn every background query (lease renewal,
    reaper, LISTEN, batch completion) into a one-span trace — noise in Tempo and cost on the
    hot path. Queries run for a request or a job still appear under its span.
    """

    def __init__(self, inner: trace.TracerProvider) -> None:
        self._inner = inner

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _ChildOnlyTracer(self._inner.get_tracer(*args, **kwargs))


def _has_parent(context: otel_context.Context | None) -> bool:
    return trace.get_current_span(context).get_span_context().is_valid


class _ChildOnlyTracer(trace.Tracer):
    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> trace.Span:
        if not _has_parent(context):
            return trace.INVALID_SPAN
        return self._inner.start_span(name, context, *args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Any = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        """The SDK records a failing query's exception with its message, and PostgreSQL's
        message quotes the value it refused (``CONTEXT: JSON data, line 1: {"user": "…``):
        a job's input in the exported span. Recorded here by type only, as every span of
        ours is (``tracing.record_error``)."""
        if not _has_parent(context):
            yield trace.INVALID_SPAN
            return
        with self._inner.start_as_current_span(
            name, context, kind, attributes, links, start_time,
            record_exception=False, set_status_on_exception=False, end_on_exit=end_on_exit,
        ) as span:  # fmt: skip
            try:
                yield span
            except BaseException as exc:
                from service.tracing import record_error  # (tracing imports this module)

                record_error(span, exc)
                raise
