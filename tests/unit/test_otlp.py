"""The direct OTLP encoder writes exactly what the SDK's encoder does, and both exporters send
it: over gRPC to a real receiver, over HTTP to a real server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode

from service import otlp
from tests.otlp_receiver import OtlpReceiver

REMOTE = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "vendor=abc,other=x y",
}


def _provider(resource: Resource, limits: SpanLimits | None = None) -> tuple[Any, Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource, span_limits=limits, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _spans() -> list[ReadableSpan]:
    """Spans with every field and value kind the encoder writes, from two resources and
    three instrumentation scopes (one with version, schema URL and attributes)."""
    provider, exporter = _provider(Resource({"service.name": "t", "n": 1, "f": 0.5}))
    plain = provider.get_tracer("plain")
    rich = provider.get_tracer(
        "rich", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.26.0",
        attributes={"scope.attr": "x"},
    )  # fmt: skip
    parent = propagate.extract(REMOTE)
    remote = trace.get_current_span(parent).get_span_context()
    attrs: dict[str, Any] = {
        "str": "text", "unicode": "żółw 🐢", "empty": "", "true": True, "false": False,
        "zero": 0, "neg": -5, "big": 2**62, "min": -(2**63), "float": 1.25, "negf": -0.0,
        "strs": ("a", "b"), "ints": (1, -2, 3), "floats": (0.5,), "bools": (True, False),
        "none_list": (),
    }  # fmt: skip
    with rich.start_as_current_span(
        "process q", context=parent, kind=SpanKind.CONSUMER, attributes=attrs,
        links=[Link(remote, {"link.attr": 7}), Link(remote)],
    ) as span:  # fmt: skip
        span.add_event("exception", {"exception.type": "ValueError"})
        span.add_event("bare")
        with plain.start_as_current_span("chat m", kind=SpanKind.CLIENT) as child:
            child.set_status(StatusCode.ERROR, "timeout")
            child.set_attribute("error.type", "timeout")
    with plain.start_as_current_span("ok", kind=SpanKind.SERVER) as ok:
        ok.set_status(StatusCode.OK)
    spans = list(exporter.get_finished_spans())
    other, exporter2 = _provider(
        Resource({"service.name": "u"}, schema_url="https://opentelemetry.io/schemas/1.26.0"),
        SpanLimits(max_attributes=2, max_events=1, max_links=1),
    )
    with other.get_tracer("limited").start_as_current_span(
        "limited", attributes={"a": 1, "b": 2, "c": 3}, links=[Link(remote), Link(remote)]
    ) as lim:
        lim.add_event("one")
        lim.add_event("two")
    internal = other.get_tracer("limited").start_span("internal", context=None)
    internal.end()
    # Equal resources and scopes in distinct objects group together, as in the SDK.
    twin, exporter3 = _provider(Resource({"service.name": "t", "n": 1, "f": 0.5}))
    twin.get_tracer("plain").start_span("twin").end()
    return spans + list(exporter2.get_finished_spans()) + list(exporter3.get_finished_spans())


def _same(data: bytes, spans: list[ReadableSpan]) -> None:
    assert ExportTraceServiceRequest.FromString(data) == encode_spans(spans)


def test_fast_encoding_parses_to_what_the_sdk_encodes() -> None:
    spans = _spans()
    data = otlp._encode(spans)  # the fast path itself, no fallback
    _same(data, spans)
    decoded = ExportTraceServiceRequest.FromString(data)
    assert len(decoded.resource_spans) == 2
    assert sum(len(ss.spans) for rs in decoded.resource_spans for ss in rs.scope_spans) == len(
        spans
    )


def test_every_span_kind_and_one_span_at_a_time() -> None:
    for span in _spans():
        _same(otlp.encode([span]), [span])


def test_an_unencodable_value_falls_back_to_the_sdk_encoder() -> None:
    provider, exporter = _provider(Resource({}))
    provider.get_tracer("t").start_span("s", attributes={"huge": 2**70, "ok": 1}).end()
    spans = _spans() + list(exporter.get_finished_spans())
    with pytest.raises(otlp._Unencodable):
        otlp._encode(spans)  # 2**70 does not fit an int64
    _same(otlp.encode(spans), spans)  # the SDK drops that one attribute and logs it


def test_the_attribute_cache_keeps_types_apart() -> None:
    provider, exporter = _provider(Resource({}))
    tracer = provider.get_tracer("t")
    for value in (1, True, 1.0, "1", 0.0, -0.0):  # (0.0 == -0.0: the cache merged them)
        tracer.start_span("s", attributes={"v": value}).end()
    spans = list(exporter.get_finished_spans())
    _same(otlp.encode(spans), spans)
    negative_zero = ExportTraceServiceRequest.FromString(otlp.encode(spans[-1:]))
    [kv] = negative_zero.resource_spans[0].scope_spans[0].spans[0].attributes
    assert str(kv.value.double_value) == "-0.0"


def test_grpc_exporter_sends_the_encoded_spans() -> None:
    spans = _spans()
    receiver = OtlpReceiver().start()
    try:
        exporter = otlp.GrpcSpanExporter(endpoint=receiver.endpoint, insecure=True)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        [request] = receiver.requests
        assert request == encode_spans(spans)
        exporter.shutdown()
    finally:
        receiver.stop()


@pytest.fixture
def http_collector() -> Iterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_http_exporter_sends_the_encoded_spans(http_collector: tuple[str, list[bytes]]) -> None:
    url, bodies = http_collector
    spans = _spans()
    exporter = otlp.HttpSpanExporter(endpoint=url)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    [body] = bodies
    _same(body, spans)
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE  # after shutdown, like the SDK's
