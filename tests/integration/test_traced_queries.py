"""With psycopg instrumented, queries run for a request or a job make database spans, and the
worker's bookkeeping statements (claims, batched completions) bypass the instrumentation: they
serve many jobs and run on every one of them (see ``service.db.database.Session``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.db import open_database
from service.jobs import JobRepository
from service.jobs.model import NewJob


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    PsycopgInstrumentor().instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        PsycopgInstrumentor().uninstrument()


async def test_bookkeeping_statements_bypass_the_instrumentation(
    db_url: str, provider: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = provider
    db = await open_database(db_url, max_size=2)  # after instrumenting: traced connections
    try:
        repo = JobRepository(db, backoff_base=0.0, backoff_max=0.0)
        new = NewJob(owner_service="t", task_type="llm_chat", model_profile="q")
        with tracer_provider.get_tracer("t").start_as_current_span("job"):
            job, _ = await repo.create(new)
            assert exporter.get_finished_spans(), "the instrumentation is in place"
            exporter.clear()
            [claimed] = await repo.claim("q", "w", limit=5, lease_seconds=60)
            assert await repo.complete_many("w", [(claimed.id, {"ok": True})]) == {job.id}
            assert exporter.get_finished_spans() == ()  # bypassed, even inside a span
            assert (await repo.get(job.id)).status == "completed"
            assert len(exporter.get_finished_spans()) == 1  # a query of the job's: traced
    finally:
        await db.close()


async def test_a_refused_query_is_recorded_by_type_not_by_its_message(db_url: str) -> None:
    """PostgreSQL's message quotes what it refused (``CONTEXT: JSON data, line 1: {"user":
    "…``), and the SDK recorded it as the span's status and exception event: a job's input in
    the export. Through the service's provider (``ChildSpansOnly``), by type only."""
    from service.db import ValueRefused
    from service.telemetry import ChildSpansOnly

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    PsycopgInstrumentor().instrument(tracer_provider=ChildSpansOnly(tracer_provider))
    db = await open_database(db_url, max_size=1)
    try:
        repo = JobRepository(db, backoff_base=0.0, backoff_max=0.0)
        secret = "violet-okapi-prompt"
        new = NewJob(owner_service="t", task_type="llm_chat", model_profile="q",
                     input={"user": f"{secret} \u0000 tail"})  # fmt: skip
        tracer = tracer_provider.get_tracer("t")
        with tracer.start_as_current_span("request"), pytest.raises(ValueRefused):
            await repo.create(new)
    finally:
        await db.close()
        PsycopgInstrumentor().uninstrument()
    [query] = [s for s in exporter.get_finished_spans() if s.name != "request"]
    assert query.status.status_code.name == "ERROR"
    assert query.attributes is not None and query.attributes["error.type"]
    exported = repr(query.to_json()) + repr([e.attributes for e in query.events])
    assert secret not in exported and "CONTEXT" not in exported
    assert [e.name for e in query.events] == ["exception"]
