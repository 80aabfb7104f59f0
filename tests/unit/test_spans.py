"""The lean per-job spans export exactly what the SDK's spans do for the same calls, honour the
provider's sampler, and are no-ops without a provider."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, DEFAULT_ON, ParentBased, Sampler
from opentelemetry.trace import Link, SpanKind, StatusCode

from service import otlp, spans, telemetry, tracing
from service.jobs.model import Job
from tests.helpers import running_job

REMOTE = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "vendor=abc",
}
UNSAMPLED = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}
Start = Callable[..., trace.Span]


class CountingIds(IdGenerator):
    """Deterministic ids, so two providers hand out the same ones in the same order."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._next)

    def generate_trace_id(self) -> int:
        return 0xABC0000 + next(self._next)


def _provider(
    sampler: Sampler | None = None, limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource({"service.name": "t"}),
        id_generator=CountingIds(),
        sampler=sampler,
        shutdown_on_exit=False,
        span_limits=limits,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def lean() -> Iterator[tuple[spans.LeanTracer, InMemorySpanExporter]]:
    provider, exporter = _provider()
    spans.install(provider)
    try:
        yield spans.LeanTracer("service.jobs"), exporter
    finally:
        spans.install(None)


def _scenario(start: Start) -> None:
    """What the worker does with its spans: a root ``receive``, a ``process`` continuing a
    stored context (parent and link), a GenAI child with response attributes, a failure."""
    parent = propagate.extract(REMOTE)
    stored = trace.get_current_span(parent).get_span_context()
    receive = start("receive q", SpanKind.CLIENT, {"messaging.system": "ai-service"}, None, (), 10)
    receive.set_attribute("messaging.batch.message_count", 3)
    receive.end(20)
    attrs = {"messaging.message.id": "j-1", "ai_service.job.attempt": 2, "wait": 1.5}
    process = start("process q", SpanKind.CONSUMER, attrs, parent, (Link(stored),), 30)
    with trace.use_span(process, end_on_exit=False):
        chat = start("chat m", SpanKind.CLIENT, {"gen_ai.request.model": "m"}, None, (), 40)
        chat.set_attributes(
            {"gen_ai.response.finish_reasons": ["stop", "length"], "gen_ai.usage.input_tokens": 7}
        )
        chat.set_attribute("flag", True)
        chat.end(50)
        process.set_attribute("error.type", "provider_unavailable")
        process.set_status(StatusCode.ERROR, "provider_unavailable")
        process.add_event("exception", {"exception.type": "builtins.ValueError"}, 55)
        process.update_name("process q2")
        process.set_status(StatusCode.OK)  # ERROR was set first: OK now wins, as in the SDK
        process.set_status(StatusCode.ERROR, "ignored after OK")
        process.end(60)
    process.set_attribute("after.end", "ignored")
    process.end(70)  # a second end changes nothing


def _sdk_start(tracer: trace.Tracer) -> Start:
    def start(name: str, kind: SpanKind, attrs: Any, ctx: Any, links: Any, at: int) -> trace.Span:
        return tracer.start_span(name, ctx, kind, attrs, links, at)

    return start


def _lean_start(tracer: spans.LeanTracer) -> Start:
    def start(name: str, kind: SpanKind, attrs: Any, ctx: Any, links: Any, at: int) -> trace.Span:
        return tracer.start_span(name, kind, attrs, ctx, links, at)

    return start


def _exported(finished: tuple[ReadableSpan, ...]) -> Any:
    return encode_spans(finished)


@pytest.mark.parametrize(
    "sampler",
    # The SDK's default instance takes the lean tracer's shortcut; an equal sampler of our
    # own goes through the sampler's call chain. Both must come out as the SDK's spans do.
    [DEFAULT_ON, ParentBased(ALWAYS_ON)],
    ids=["default-sampler", "sampler-called"],
)
def test_lean_spans_export_what_the_sdks_spans_export(sampler: Sampler) -> None:
    provider, lean_exporter = _provider(sampler)
    spans.install(provider)
    try:
        _scenario(_lean_start(spans.LeanTracer("service.jobs")))
    finally:
        spans.install(None)
    provider, sdk_exporter = _provider(sampler)
    _scenario(_sdk_start(provider.get_tracer("service.jobs")))

    ours, theirs = lean_exporter.get_finished_spans(), sdk_exporter.get_finished_spans()
    assert [s.name for s in ours] == ["receive q", "chat m", "process q2"]
    assert _exported(ours) == _exported(theirs)
    # The direct encoder reads lean spans' fields without the ReadableSpan accessors: it
    # must write what the SDK's encoder makes of them, alone and mixed with the SDK's spans.
    for batch in (ours, (*ours, *theirs), (theirs[0], ours[0], theirs[1], ours[1])):
        assert ExportTraceServiceRequest.FromString(otlp._encode(batch)) == _exported(batch)
    chat, process = ours[1], ours[2]
    assert chat.parent is not None and chat.parent.span_id == process.context.span_id
    assert process.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C


def test_span_limits_apply_to_lean_spans_as_to_the_sdks() -> None:
    """With OTEL_CAPTURE_CONTENT=true a GenAI span carries the prompt: one of megabytes made
    its export batch exceed the collector's message size (every span in it lost), whatever
    OTEL_*_ATTRIBUTE_VALUE_LENGTH_LIMIT said. The SDK's limits, cut as the SDK cuts."""
    limits = SpanLimits(max_span_attributes=2, max_span_attribute_length=3)
    provider, lean_exporter = _provider(limits=limits)
    spans.install(provider)
    try:
        _scenario(_lean_start(spans.LeanTracer("service.jobs")))
    finally:
        spans.install(None)
    provider, sdk_exporter = _provider(limits=limits)
    _scenario(_sdk_start(provider.get_tracer("service.jobs")))
    ours, theirs = lean_exporter.get_finished_spans(), sdk_exporter.get_finished_spans()
    assert _exported(ours) == _exported(theirs)
    assert ExportTraceServiceRequest.FromString(otlp._encode(ours)) == _exported(theirs)
    assert dict(ours[1].attributes or {}) == {
        "gen_ai.usage.input_tokens": 7,
        "flag": True,
    }
    assert ours[1].dropped_attributes == theirs[1].dropped_attributes == 2
    assert dict(ours[2].attributes or {}) == {"wait": 1.5, "error.type": "pro"}  # cut to 3


def test_the_current_lean_span_is_what_traceparent_and_children_follow(
    lean: tuple[spans.LeanTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = lean
    span = tracer.start_span("process q", SpanKind.CONSUMER, {})
    with tracing.current(span):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        assert trace.get_current_span() is span
    ctx = span.get_span_context()
    assert carrier["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    assert not span.is_recording()  # ended on leaving the block
    assert trace.get_current_span() is not span
    assert len(exporter.get_finished_spans()) == 1


def test_record_exception_keeps_the_type_and_drops_the_message(
    lean: tuple[spans.LeanTracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = lean
    span = tracer.start_span("chat m", SpanKind.CLIENT, {})
    span.record_exception(KeyError("the user's prompt"))
    span.end()
    (event,) = exporter.get_finished_spans()[0].events
    assert dict(event.attributes or {}) == {"exception.type": "builtins.KeyError"}


def test_the_providers_sampler_decides() -> None:
    provider, exporter = _provider(sampler=ALWAYS_OFF)
    spans.install(provider)
    try:
        tracer = spans.LeanTracer("service.jobs")
        dropped = tracer.start_span("process q", SpanKind.CONSUMER, {"a": 1})
        assert not dropped.is_recording() and dropped.get_span_context().is_valid
        dropped.end()
        provider2, exporter2 = _provider()  # default: parent-based, root always on
        spans.install(provider2)
        child = tracer.start_span("process q", SpanKind.CONSUMER, {}, propagate.extract(UNSAMPLED))
        assert not child.is_recording()
        assert tracer.start_span("process q", SpanKind.CONSUMER, {}).is_recording()
    finally:
        spans.install(None)
    assert exporter.get_finished_spans() == () and exporter2.get_finished_spans() == ()


def test_without_a_provider_lean_spans_are_no_ops() -> None:
    span = spans.LeanTracer("service.jobs").start_span("process q", SpanKind.CONSUMER, {})
    assert span is trace.INVALID_SPAN


def _job(trace_context: dict[str, str] | None) -> Job:
    return running_job(trace_context=trace_context)


def test_each_process_span_continues_its_own_jobs_context(
    lean: tuple[spans.LeanTracer, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Consecutive jobs of one batch share a stored context (read once); the next batch's
    # context, a missing one and a malformed one must not be mistaken for it.
    monkeypatch.setattr(telemetry, "_provider", object())
    other = {"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}
    contexts = [REMOTE, dict(REMOTE), other, None, {"traceparent": "garbage"}, REMOTE]
    for tc in contexts:
        with tracing.process(_job(tc)):
            pass
    finished = lean[1].get_finished_spans()
    remote_id = 0x0AF7651916CD43DD8448EB211C80319C
    expected = [remote_id, remote_id, 0x11111111111111111111111111111111, None, None, remote_id]
    for span, trace_id in zip(finished, expected, strict=True):
        if trace_id is None:  # a root: a fresh trace, no parent, no link
            assert span.parent is None and not span.links
            assert span.context.trace_id not in (remote_id, 0x11111111111111111111111111111111)
        else:
            assert span.parent is not None and span.parent.is_remote
            assert span.context.trace_id == trace_id == span.links[0].context.trace_id


class _Custom(TextMapPropagator):
    """A propagator of another format: ``tracing.inject`` must leave the writing to it."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        carrier["x-custom"] = format(trace.get_current_span(context).get_span_context().span_id)

    @property
    def fields(self) -> set[str]:
        return {"x-custom"}


@pytest.mark.parametrize(
    "remote",
    [REMOTE, UNSAMPLED, {"traceparent": REMOTE["traceparent"]}],
    ids=["tracestate", "unsampled", "plain"],
)
def test_inject_writes_what_the_configured_propagators_write(remote: dict[str, str]) -> None:
    def both() -> tuple[dict[str, str], dict[str, str]]:
        ours: dict[str, str] = {}
        theirs: dict[str, str] = {}
        tracing.inject(ours)
        propagate.inject(theirs)
        return ours, theirs

    ours, theirs = both()
    assert ours == theirs == {}  # no current span
    remote_span = trace.NonRecordingSpan(
        trace.get_current_span(propagate.extract(remote)).get_span_context()
    )
    with trace.use_span(remote_span):
        ours, theirs = both()
        assert ours == theirs and ours["traceparent"] == remote["traceparent"]
        token = otel_context.attach(baggage.set_baggage("tenant", "t1"))
        try:
            ours, theirs = both()
            assert ours == theirs and theirs["baggage"] == "tenant=t1"
        finally:
            otel_context.detach(token)
    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([_Custom()]))
    try:
        with trace.use_span(remote_span):
            ours, theirs = both()
        assert ours == theirs and set(ours) == {"x-custom"}
    finally:
        propagate.set_global_textmap(saved)
