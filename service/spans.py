"""Lean recording spans for the spans a worker makes per job (``process``, ``receive``, the
GenAI ``chat``/``transcribe`` call).

Why not the SDK's ``Span`` for these: it is built for arbitrary instrumentation, so each span
validates and copies every attribute (``BoundedAttributes``), takes a lock per change, wraps
links and events in bounded lists, and goes through the tracer configurator and the SDK's
self-metrics. With model latency near zero a worker runs ~1,000 jobs/s on one core, and that
general-purpose bookkeeping was the largest part of what tracing cost end to end
(``python -m bench tracing``). The spans here carry attributes our own code builds (strings,
numbers, booleans, sequences of strings), so they keep them in a plain ``dict``.

What stays the SDK's: the installed ``TracerProvider``'s sampler (``OTEL_TRACES_SAMPLER``
applies unchanged), its id generator, its resource, and its span processors, which receive the
same ``ReadableSpan`` the SDK's span would hand them (a test compares the two exports field by
field). Span limits apply to attributes (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``, and
``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` / ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``), once, as
the span ends: with ``OTEL_CAPTURE_CONTENT=true`` a GenAI span carries the prompt, and one of
megabytes made its export batch exceed the collector's message size, losing every span in it.
What is left out, on purpose: limits on events and links (a span here has one or two),
processors' ``on_start`` (the batch processor ignores it) and exception messages
(``record_exception`` records the type only: messages may quote job input).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import Attributes, AttributeValue

_UNSET = Status(StatusCode.UNSET)
_SAMPLE, _DROP = Decision.RECORD_AND_SAMPLE, Decision.DROP
# TraceFlags by (sampled, random trace id): built once, not per span.
_FLAGS = {
    (sampled, random_id): TraceFlags(
        (TraceFlags.SAMPLED if sampled else 0) | (TraceFlags.RANDOM_TRACE_ID if random_id else 0)
    )
    for sampled in (False, True)
    for random_id in (False, True)
}


class _Pipeline:
    """What a lean span needs from the installed provider."""

    def __init__(self, provider: TracerProvider) -> None:
        self.resource = provider.resource
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        # The provider's own fan-out to every processor added to it (the SDK's spans end
        # through the same object); there is no public accessor.
        self.processor: SpanProcessor = provider._active_span_processor
        # The SDK's default (and ``OTEL_TRACES_SAMPLER=parentbased_always_on``): decided here
        # without the sampler's call chain, with the same outcome (tested).
        self.parent_based_on = provider.sampler is DEFAULT_ON
        limits = provider._span_limits  # (no public accessor either)
        self.max_attributes: int | None = limits.max_span_attributes
        self.max_length: int | None = limits.max_span_attribute_length


_pipeline: _Pipeline | None = None


def install(provider: TracerProvider | None) -> None:
    """Record spans through ``provider`` from now on (``None``: lean spans become no-ops)."""
    global _pipeline
    _pipeline = None if provider is None else _Pipeline(provider)


class LeanSpan(trace.Span, ReadableSpan):
    """A recording span whose attributes live in a plain dict (see the module docstring).

    It is its own ``ReadableSpan`` (as the SDK's span is), so ending it hands the processors
    this object rather than a copy; the fields are the ones ``ReadableSpan`` reads.
    """

    def __init__(
        self,
        pipeline: _Pipeline,
        scope: InstrumentationScope,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: tuple[Link, ...],
        start_time: int | None,
    ) -> None:
        self._processor = pipeline.processor
        self._limits = pipeline.max_attributes, pipeline.max_length
        self._dropped = 0
        self._resource = pipeline.resource
        self._instrumentation_scope = scope
        self._instrumentation_info = None
        self._name, self._context, self._parent, self._kind = name, context, parent, kind
        self._attributes: dict[str, Any] = attributes
        self._links: tuple[Link, ...] = links
        self._events: tuple[Event, ...] = ()
        self._status = _UNSET
        self._start_time = time.time_ns() if start_time is None else start_time
        self._end_time: int | None = None

    def get_span_context(self) -> SpanContext:
        return cast(SpanContext, self._context)

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is None and value is not None:
            self._attributes[key] = tuple(value) if isinstance(value, list) else value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_time is None:
            mine = self._attributes
            for key, value in attributes.items():
                if value is not None:
                    mine[key] = tuple(value) if isinstance(value, list) else value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is None:
            event = Event(name, dict(attributes) if attributes else None, timestamp)
            self._events = (*self._events, event)

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is None and context.is_valid:
            self._links = (*self._links, Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """The SDK's rules: OK is final, UNSET changes nothing."""
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        new = status if isinstance(status, Status) else Status(status, description)
        if new.status_code is not StatusCode.UNSET:
            self._status = new

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """The exception's type only: its message may quote a job's input."""
        cls = type(exception)
        event: dict[str, Any] = {"exception.type": f"{cls.__module__}.{cls.__qualname__}"}
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    # ReadableSpan's accessors, for what the exporter reads per span: nothing is ever dropped
    # (no limits), and the tuples are already immutable (no copies).
    @property
    def events(self) -> Sequence[Event]:
        return self._events

    @property
    def links(self) -> Sequence[Link]:
        return self._links

    @property
    def dropped_attributes(self) -> int:
        return self._dropped

    @property
    def dropped_events(self) -> int:
        return 0

    @property
    def dropped_links(self) -> int:
        return 0

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is None:
            self._end_time = time.time_ns() if end_time is None else end_time
            count, length = self._limits
            if length is not None or (count is not None and len(self._attributes) > count):
                self._limit(count, length)
            self._processor.on_end(self)

    def _limit(self, count: int | None, length: int | None) -> None:
        """The SDK's span limits: the oldest attributes past ``count`` dropped, strings (and
        strings in sequences) cut to ``length``."""
        attributes = self._attributes
        if count is not None and len(attributes) > count:
            keys = list(attributes)
            self._dropped = len(keys) - count
            attributes = {k: attributes[k] for k in keys[self._dropped :]}
        if length is not None:
            attributes = {k: _cut(v, length) for k, v in attributes.items()}
        self._attributes = attributes


def _cut(value: Any, length: int) -> Any:
    if isinstance(value, str):
        return value[:length]
    if isinstance(value, tuple):
        return tuple(v[:length] if isinstance(v, str) else v for v in value)
    return value


class LeanTracer:
    """Starts ``LeanSpan``s under one instrumentation scope; a no-op until ``install``."""

    def __init__(self, scope: str) -> None:
        self._scope = InstrumentationScope(scope)

    def start_span(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        context: otel_context.Context | None = None,
        links: tuple[Link, ...] = (),
        start_time: int | None = None,
    ) -> trace.Span:
        """Like the SDK's ``Tracer.start_span``: parent from ``context`` (else the current
        one), the provider's sampling decision, a fresh span id. ``links`` must be valid
        (this tracer's callers link to contexts they have checked)."""
        pipeline = _pipeline
        if pipeline is None:
            return trace.INVALID_SPAN
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is not None and parent.is_valid:
            trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
        else:
            parent = None
            trace_id = pipeline.ids.generate_trace_id()
            random_id = pipeline.ids.is_trace_id_random()
        if pipeline.parent_based_on:
            keep = parent is None or parent.trace_flags.sampled
            decision = _SAMPLE if keep else _DROP
            state = None if parent is None else parent.trace_state
        else:
            result = pipeline.sampler.should_sample(
                context, trace_id, name, kind, attributes, links
            )
            decision, state = result.decision, result.trace_state
            attributes = dict(result.attributes)  # what the span starts with, as in the SDK
        flags = _FLAGS[decision is _SAMPLE, bool(random_id)]
        span_context = SpanContext(trace_id, pipeline.ids.generate_span_id(), False, flags, state)
        if decision is _DROP:
            return trace.NonRecordingSpan(span_context)
        return LeanSpan(
            pipeline, self._scope, name, span_context, parent, kind, attributes, links, start_time
        )
