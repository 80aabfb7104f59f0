"""The submission side of a job's trace: a batch up to OTEL_CREATE_SPANS_MAX_BATCH jobs gets a
``send`` CLIENT span and a ``create`` PRODUCER span per job whose context that job stores; a
larger one shares a ``send`` PRODUCER span's context (the messaging conventions' two forms)."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service import telemetry, tracing
from service.jobs.model import NewJob
from tests.helpers import captured_spans


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    with captured_spans(monkeypatch) as exporter:
        provider = telemetry._provider
        assert isinstance(provider, TracerProvider)
        monkeypatch.setattr(tracing, "tracer", provider.get_tracer("service.jobs"))
        yield exporter


def _jobs(*profiles: str) -> list[NewJob]:
    return [
        NewJob(owner_service="t", task_type="llm_chat", model_profile=p, input={"user": "x"})
        for p in profiles
    ]


def _stored_span_id(carrier: dict[str, str] | None) -> int:
    assert carrier is not None
    return trace.get_current_span(propagate.extract(carrier)).get_span_context().span_id


def _by_name(finished: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name.startswith(prefix)]


def test_a_small_batch_gets_a_create_span_per_job(exporter: InMemorySpanExporter) -> None:
    jobs = _jobs("q", "q", "v")
    ids = [uuid4() for _ in jobs]
    with tracing.send_batch(jobs, create_max=3) as sent:
        contexts = sent.trace_contexts
        sent.created([(ids[0], True), (ids[1], False), (ids[2], True)])
    finished = exporter.get_finished_spans()
    [send] = _by_name(finished, "send")
    creates = _by_name(finished, "create ")
    assert send.name == "send" and send.kind is SpanKind.CLIENT  # two profiles: no destination
    assert send.attributes is not None
    assert send.attributes["messaging.batch.message_count"] == 3
    assert send.attributes["ai_service.jobs.created"] == 2
    assert [c.name for c in creates] == ["create q", "create q", "create v"]
    assert contexts is not None
    made_flags = (True, False, True)
    for create, context, job_id, made in zip(creates, contexts, ids, made_flags, strict=True):
        assert create.kind is SpanKind.PRODUCER
        assert create.parent is not None and create.parent.span_id == send.context.span_id
        assert create.context.trace_id == send.context.trace_id
        # Each job stores its own create span's context: its process span will continue it.
        assert _stored_span_id(context) == create.context.span_id
        assert create.attributes is not None
        assert create.attributes["messaging.operation.type"] == "create"
        assert create.attributes["messaging.message.id"] == str(job_id)
        assert create.attributes["ai_service.job.created"] is made
    assert create.attributes["messaging.destination.name"] == "ai_jobs:v"


@pytest.mark.parametrize("create_max", [2, 0], ids=["larger-than-max", "never"])
def test_a_larger_batch_shares_the_send_spans_context(
    exporter: InMemorySpanExporter, create_max: int
) -> None:
    with tracing.send_batch(_jobs("q", "q", "q"), create_max=create_max) as sent:
        contexts = sent.trace_contexts
        sent.created([(uuid4(), True)] * 3)
    [send] = exporter.get_finished_spans()  # no create spans
    assert send.name == "send q" and send.kind is SpanKind.PRODUCER
    assert send.attributes is not None
    assert send.attributes["messaging.destination.name"] == "ai_jobs:q"
    assert contexts is not None and len(contexts) == 3
    assert {_stored_span_id(c) for c in contexts} == {send.context.span_id}


def test_a_failed_batch_still_ends_its_create_spans(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), tracing.send_batch(_jobs("q", "q"), create_max=10):
        raise RuntimeError("the insert failed")
    finished = exporter.get_finished_spans()
    [send] = _by_name(finished, "send")
    assert send.status.status_code is StatusCode.ERROR
    creates = _by_name(finished, "create ")
    assert len(creates) == 2
    assert all(c.attributes and "messaging.message.id" not in c.attributes for c in creates)


def test_without_tracing_a_batch_stores_no_context() -> None:
    with tracing.send_batch(_jobs("q"), create_max=10) as sent:
        assert sent.trace_contexts is None
