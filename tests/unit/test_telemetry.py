"""Tracing setup from OTEL_* variables, the child-spans-only wrapper for database spans, and
the log filter that puts trace and job ids on log lines."""

from __future__ import annotations

import json
import logging
import os

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import telemetry
from service.config import ConfigError
from service.logs import ContextFilter, JsonFormatter, job_context


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def _exporter(provider: TracerProvider) -> object:
    [processor] = provider._active_span_processor._span_processors
    return processor.span_exporter  # type: ignore[attr-defined]


def test_no_endpoint_installs_nothing() -> None:
    assert telemetry.build_provider("api", {}) is None
    assert telemetry.build_provider("api", {"OTEL_SERVICE_NAME": "x"}) is None
    assert not telemetry.enabled()


def test_sdk_disabled_wins_over_an_endpoint() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "TRUE"}
    assert telemetry.build_provider("worker", env) is None


def test_endpoint_gives_a_batching_grpc_exporter_named_by_role() -> None:
    provider = telemetry.build_provider("worker", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "ai-service-worker"
    assert isinstance(_exporter(provider), GrpcExporter)
    provider.shutdown()


def test_traces_endpoint_and_http_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    provider = telemetry.build_provider("api", env)
    assert provider is not None
    assert isinstance(_exporter(provider), HttpExporter)
    assert provider.resource.attributes["service.name"] == "ai-service-api"
    provider.shutdown()


def test_service_name_and_resource_attributes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-api")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SERVICE_NAME": "my-api"}
    provider = telemetry.build_provider("api", env)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "my-api"
    assert provider.resource.attributes["deployment.environment"] == "prod"
    provider.shutdown()


def test_sampler_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = telemetry.build_provider("api", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert provider is not None
    with provider.get_tracer("t").start_as_current_span("x") as span:
        assert not span.is_recording()
    provider.shutdown()


def test_the_endpoint_is_logged_without_its_credentials() -> None:
    for endpoint, shown in [
        ("https://user:s3cr3t-pw@otel.example:4318/o", "https://***@otel.example:4318/o"),
        ("https://otel.example:4318/o?key=AK-1", "https://otel.example:4318/o?***"),
        ("https://user:s3cr3t-pw@otel.example/o?key=AK-1", "https://***"),
    ]:
        assert telemetry.shown_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}) == shown
    assert telemetry.shown_endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}) == (
        "http://c:4317"
    )


def test_unknown_protocol_is_a_config_error() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "udp"}
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        telemetry.build_provider("api", env)


def test_child_spans_only_drops_root_spans_and_keeps_children() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    db = telemetry.ChildSpansOnly(provider).get_tracer("db")
    with db.start_as_current_span("orphan query") as orphan:
        assert not orphan.is_recording()
    db.start_span("orphan 2").end()
    with provider.get_tracer("app").start_as_current_span("job"):
        with db.start_as_current_span("query"):
            pass
        db.start_span("query 2").end()
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["job", "query", "query 2"]


def test_log_lines_carry_trace_span_and_job_ids() -> None:
    provider = TracerProvider()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    flt = ContextFilter()
    with provider.get_tracer("t").start_as_current_span("s") as span, job_context("job-1"):
        assert flt.filter(record)
    line = json.loads(JsonFormatter().format(record))
    ctx = span.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert line["job_id"] == "job-1"

    outside = logging.LogRecord("x", logging.INFO, __file__, 1, "bye", None, None)
    assert flt.filter(outside)
    assert {"trace_id", "span_id", "job_id"}.isdisjoint(json.loads(JsonFormatter().format(outside)))


def test_a_lone_surrogate_still_makes_one_json_line() -> None:
    """A failure message quoting a provider's bytes decoded with surrogateescape: UTF-8
    cannot encode it, and the line was lost to a multi-line "--- Logging error ---"."""
    record = logging.LogRecord("ai_service.t", logging.WARNING, __file__, 1, "job failed: %s",
                               ("provider said \udcff nothing",), None)  # fmt: skip
    record.error_category = "internal\udcff"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == "job failed: provider said ? nothing"
    assert parsed["error_category"] == "internal?"


def test_httpx_info_lines_and_the_pools_connection_attempts_are_silenced() -> None:
    from service.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("debug", "json")
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        # one warning per failed attempt of each pooled connection while the database is down
        # is dropped; psycopg_pool's other warnings are not
        pool = logging.getLogger("psycopg.pool")

        def warning(msg: str, *args: object) -> logging.LogRecord:
            return pool.makeRecord(pool.name, logging.WARNING, __file__, 1, msg, args, None)

        assert not pool.filter(warning("error connecting in %r: %s", "ai-service", "refused"))
        assert pool.filter(warning("reconnection attempt in pool %r failed after %s sec", "x", 300))
        setup_logging("debug", "json")  # set up again: still one filter
        assert len(pool.filters) == 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_no_provider_means_a_no_op_api() -> None:
    # Nothing in the test process installs a provider: spans are non-recording.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


def test_traces_and_metrics_share_one_resource_per_process() -> None:
    traced = telemetry.resource("worker", {})
    assert traced.attributes["service.name"] == "ai-service-worker"
    assert "service.version" in traced.attributes
    named = telemetry.resource("worker", {"OTEL_SERVICE_NAME": "x"})
    assert named.attributes["service.instance.id"] == traced.attributes["service.instance.id"]


def test_a_create_span_limit_the_span_queue_cannot_hold_is_flagged() -> None:
    assert telemetry.create_spans_warning(256, {}) is None  # the defaults: 256 vs 2,048
    assert telemetry.create_spans_warning(0, {"OTEL_BSP_MAX_QUEUE_SIZE": "64"}) is None
    warning = telemetry.create_spans_warning(1024, {})
    assert warning is not None and "OTEL_BSP_MAX_QUEUE_SIZE=2048" in warning
    assert telemetry.create_spans_warning(256, {"OTEL_BSP_MAX_QUEUE_SIZE": "512"}) is not None
    assert telemetry.create_spans_warning(256, {"OTEL_BSP_MAX_QUEUE_SIZE": "bad"}) is None
