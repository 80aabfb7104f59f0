"""The job's spans (DESIGN.md § Tracing): ``send`` on submission (with a ``create`` span per job
of a batch), ``receive`` per claim round, ``process`` per job, following the OpenTelemetry
messaging conventions; docs/tracing.md shows the resulting trace.

Why the W3C context travels in the job row (``trace_context``): the queue is PostgreSQL, so the
context cannot ride a message header; storing it lets the worker's ``process`` span continue the
submitter's trace (as its parent, and as a link, per the conventions for consumers).
Nothing here records job input or results. With tracing off every helper is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import Link, SpanKind, StatusCode

from service import spans, telemetry

if TYPE_CHECKING:
    from service.jobs.model import Job, NewJob

SYSTEM = "ai-service"
tracer = trace.get_tracer("service.jobs")
lean_tracer = spans.LeanTracer("service.jobs")  # per-job spans: see service/spans.py


def destination(profile: str) -> str:
    """The NOTIFY channel of a profile, which is what a message destination is here."""
    return f"ai_jobs:{profile}"


@lru_cache(maxsize=256)
def _messaging_of(operation: str, profile: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination(profile),
    }


def _messaging(operation: str, profile: str) -> dict[str, Any]:
    """The messaging attributes of a span (a fresh dict: spans add to it)."""
    return dict(_messaging_of(operation, profile))


CANCELLED = "cancelled"


def cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is a task's cancellation (asyncio's, or the running anyio backend's)."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    try:
        return isinstance(exc, anyio.get_cancelled_exc_class())
    except Exception:  # no async library running
        return False


def error_type(exc: BaseException) -> str:
    """Low-cardinality ``error.type``: the handler error category; ``cancelled`` for a cancelled
    call (a job cancelled, lost or stopped by shutdown: a category like the others, where the
    class name would differ by backend); else the class name. Spans and the GenAI duration
    metric both use it, so a failed call reads the same in traces and in metrics."""
    category = getattr(exc, "category", None)
    if isinstance(category, str):
        return category
    return CANCELLED if cancelled(exc) else type(exc).__qualname__


def record_error(span: trace.Span, exc: BaseException, kind: str | None = None) -> None:
    """Mark ``span`` failed with the exception's type only: messages may quote inputs."""
    if not span.is_recording():
        return
    etype = kind or error_type(exc)
    span.set_attribute("error.type", etype)
    span.set_status(StatusCode.ERROR, etype)
    cls = type(exc)
    span.add_event("exception", {"exception.type": f"{cls.__module__}.{cls.__qualname__}"})


class current(AbstractContextManager[trace.Span]):
    """``span`` as the current span for the block (log lines, the ``traceparent`` sent to the
    inference server and database spans see it); an exception or a cancellation leaving the
    block is recorded (see ``record_error``: a cancelled call did not succeed, and its metric
    says ``cancelled`` too); the span ends with the block. A class rather than a generator:
    it runs twice per job."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and (isinstance(exc, Exception) or cancelled(exc)):
            record_error(self._span, exc)
        otel_context.detach(self._token)
        self._span.end()


_W3C_FIELDS = frozenset(("traceparent", "tracestate", "baggage"))
_w3c_only: tuple[object, bool] = (None, False)


def _propagators_are_w3c() -> bool:
    """Whether the configured propagators write W3C trace context (and baggage) only: the
    default (``OTEL_PROPAGATORS=tracecontext,baggage``). Decided once per installed set."""
    global _w3c_only
    textmap = propagate.get_global_textmap()
    if _w3c_only[0] is not textmap:
        fields = textmap.fields
        _w3c_only = (textmap, "traceparent" in fields and fields <= _W3C_FIELDS)
    return _w3c_only[1]


def inject(carrier: dict[str, str], context: otel_context.Context | None = None) -> None:
    """``propagate.inject(carrier, context)`` (default: the current context). With the default
    propagators and no baggage (every job's provider call) the ``traceparent``/``tracestate``
    headers are written here directly, as the W3C propagator writes them (tested equal): it
    runs once per job."""
    ctx = trace.get_current_span(context).get_span_context()
    if ctx.is_valid and _propagators_are_w3c() and not baggage.get_all(context):
        carrier["traceparent"] = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        if ctx.trace_state:
            carrier["tracestate"] = ctx.trace_state.to_header()
    else:
        propagate.inject(carrier, context)


def _inject(context: otel_context.Context | None = None) -> dict[str, str] | None:
    carrier: dict[str, str] = {}
    inject(carrier, context)
    return carrier or None


# --- submission -------------------------------------------------------------------------------
@contextmanager
def send(profile: str) -> Iterator[Send]:
    """The ``send <profile>`` PRODUCER span around creating one job."""
    if not telemetry.enabled():
        yield Send(None)
        return
    span = tracer.start_span(
        f"send {profile}", kind=SpanKind.PRODUCER, attributes=_messaging("send", profile)
    )
    with current(span):
        yield Send(span, _inject())


@dataclass
class Send:
    span: trace.Span | None
    trace_context: dict[str, str] | None = None

    def created(self, job_id: UUID, created: bool) -> None:
        if self.span is not None:
            self.span.set_attribute("messaging.message.id", str(job_id))
            self.span.set_attribute("ai_service.job.created", created)


@contextmanager
def send_batch(jobs: Sequence[NewJob], create_max: int) -> Iterator[Batch]:
    """The spans of a batch submission, as the messaging conventions lay out batch sending.

    Up to ``create_max`` jobs (``OTEL_CREATE_SPANS_MAX_BATCH``): one ``send`` CLIENT span for
    the batch and, under it, a ``create <profile>`` PRODUCER span per job whose context is
    stored with that job, so each job has its own creation context (and its id on the span).
    A larger batch gets one ``send`` PRODUCER span whose context every job shares: a
    10,000-job batch would otherwise make 10,000 spans in one request (~10 µs of API CPU
    each to record and encode, measured in a loop) and overflow the span queue (2,048 by
    default), which drops spans at random and leaves ``process`` spans without their parent.
    """
    if not telemetry.enabled():
        yield Batch()
        return
    profiles = sorted({j.model_profile for j in jobs})
    per_job = 0 < len(jobs) <= create_max
    attrs: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.batch.message_count": len(jobs),
    }
    if len(profiles) == 1:
        attrs["messaging.destination.name"] = destination(profiles[0])
    name = f"send {profiles[0]}" if len(profiles) == 1 else "send"
    kind = SpanKind.CLIENT if per_job else SpanKind.PRODUCER
    span = tracer.start_span(name, kind=kind, attributes=attrs)
    with current(span):
        if not per_job:
            yield Batch(span, [_inject()] * len(jobs))
            return
        creates = [
            lean_tracer.start_span(
                f"create {j.model_profile}",
                SpanKind.PRODUCER,
                _messaging("create", j.model_profile),
            )
            for j in jobs
        ]
        contexts = [_inject(trace.set_span_in_context(c)) for c in creates]
        batch = Batch(span, contexts, creates)
        try:
            yield batch
        finally:
            for create in creates:
                create.end()


@dataclass
class Batch:
    span: trace.Span | None = None
    contexts: list[dict[str, str] | None] = field(default_factory=list)
    creates: list[trace.Span] = field(default_factory=list)  # one per job, or none

    @property
    def trace_contexts(self) -> list[dict[str, str] | None] | None:
        return self.contexts or None

    def created(self, results: Sequence[tuple[UUID, bool]]) -> None:
        if self.span is not None:
            self.span.set_attribute("ai_service.jobs.created", sum(1 for _, c in results if c))
        if not self.creates:  # a shared context: the ids are on no span of their own
            return
        for create, (job_id, created) in zip(self.creates, results, strict=True):
            create.set_attribute("messaging.message.id", str(job_id))
            create.set_attribute("ai_service.job.created", created)


# --- the worker -------------------------------------------------------------------------------
@contextmanager
def receive(profile: str) -> Iterator[Receive]:
    """The ``receive <profile>`` span of one claim round, recorded once the round is over and
    only if it claimed something or failed: an empty round (an idle poll, a wake-up another
    worker won) would be a one-span trace of noise. Its queries are therefore not traced."""
    if not telemetry.enabled():
        yield Receive()
        return
    started = time.time_ns()
    got = Receive()
    try:
        yield got
    except Exception as exc:
        span = _receive_span(profile, started)
        record_error(span, exc)
        span.end()
        raise
    if got.count:
        span = _receive_span(profile, started)
        span.set_attribute("messaging.batch.message_count", got.count)
        span.end()


_ROOT = otel_context.Context()


def _receive_span(profile: str, started: int) -> trace.Span:
    return lean_tracer.start_span(
        f"receive {profile}",
        SpanKind.CLIENT,
        _messaging("receive", profile),
        context=_ROOT,  # a root: a claim round serves many traces
        start_time=started,
    )


@dataclass
class Receive:
    count: int = 0

    def got(self, jobs: Sequence[Job]) -> None:
        self.count = len(jobs)


_MICROSECOND = timedelta(microseconds=1)
UNTRACED: AbstractContextManager[trace.Span] = nullcontext(trace.INVALID_SPAN)


def process(job: Job) -> AbstractContextManager[trace.Span]:
    """The ``process <profile>`` CONSUMER span of one attempt: parent and link are the
    context stored at submission; the provider's CLIENT span becomes its child."""
    if not telemetry.enabled():
        return UNTRACED
    parent, links = _stored(job.trace_context)
    attrs = {
        **_messaging_of("process", job.model_profile),
        "messaging.message.id": str(job.id),
        "ai_service.job.task_type": job.task_type,
        "ai_service.job.owner_service": job.owner_service,
        "ai_service.job.attempt": job.attempts,
    }
    if job.started_at is not None:  # in ms, to the microsecond (what timestamps carry)
        wait_us = (job.started_at - job.due_at) // _MICROSECOND
        attrs["ai_service.job.queue_wait_ms"] = wait_us / 1000 if wait_us > 0 else 0.0
    span = lean_tracer.start_span(
        f"process {job.model_profile}", SpanKind.CONSUMER, attrs, context=parent, links=links
    )
    return current(span)


_NO_LINKS: tuple[Link, ...] = ()
# The last stored context read: the jobs of one batch share it and are claimed together.
_last_stored: tuple[dict[str, str], otel_context.Context | None, tuple[Link, ...]] | None = None


def _stored(
    carrier: dict[str, str] | None,
) -> tuple[otel_context.Context | None, tuple[Link, ...]]:
    """The submitter's context from a job's ``trace_context`` (through the configured
    propagators) and the link to it; ``None`` and no link if it is absent or invalid."""
    global _last_stored
    if not carrier:
        return None, _NO_LINKS
    last = _last_stored
    if last is not None and last[0] == carrier:
        return last[1], last[2]
    parent: otel_context.Context | None = propagate.extract(carrier)
    stored = trace.get_current_span(parent).get_span_context()
    links = (Link(stored),) if stored.is_valid else _NO_LINKS
    if not links:
        parent = None
    _last_stored = (dict(carrier), parent, links)
    return parent, links
