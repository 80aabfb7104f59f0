"""OTLP trace export with a direct protobuf encoder.

Why: the SDK's encoder builds a protobuf object for every span, attribute and value before
serialising them, ~40 µs per span on this project's machine. The export thread holds the GIL
meanwhile, so at a worker's job rates that CPU is taken from the jobs themselves (the largest
part of what tracing cost end to end, ``python -m bench tracing``). ``encode`` writes the same
``ExportTraceServiceRequest`` bytes straight from the SDK's spans, a few times faster; a test
proves its output parses to exactly what the SDK's encoder produces, and any span it cannot
encode (an out-of-range integer, a lone surrogate) makes the batch fall back to the SDK's
encoder, so the fast path never changes what a collector receives.

The exporters below are the SDK's OTLP exporters (every ``OTEL_EXPORTER_OTLP_*`` setting,
retries, TLS, compression and headers are theirs) with only the encoding swapped.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as _GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as _HttpExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from service.spans import LeanSpan

log = logging.getLogger("ai_service.otlp")

_pack_d = struct.Struct("<d").pack
_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags masks
_GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _Unencodable(Exception):
    """A value the fast path does not write; the batch goes through the SDK's encoder."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` (already encoded), length, payload."""
    n = len(payload)
    return tag + (bytes((n,)) if n < 0x80 else _varint(n)) + payload


def _value(v: Any) -> bytes:
    """An ``AnyValue`` message."""
    if isinstance(v, str):
        return _field(b"\x0a", v.encode())
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise _Unencodable(v)
        return b"\x18" + _varint(v if v >= 0 else v + (1 << 64))
    if isinstance(v, float):
        return b"\x21" + _pack_d(v)
    if v is None:
        return b""
    if isinstance(v, bytes):
        return _field(b"\x3a", v)
    if isinstance(v, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _value(x)) for x in v]))
    if isinstance(v, Mapping):
        return _field(b"\x32", b"".join([_field(b"\x0a", _kv(str(k), x)) for k, x in v.items()]))
    raise _Unencodable(type(v))


def _kv(key: str, v: Any) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _value(v))


# Encoded, tagged KeyValues of scalar attributes and tuples of strings: most
# (messaging.system=ai-service, the model, the task type, the finish reasons) repeat on every
# span. Keyed with the value's type, since 1 == 1.0 == True, and with the field tag (span,
# event, link and resource attributes differ).
# A key seen with many different values (a job id, a response id, a duration) is not cached:
# its entries would only push the common ones out.
_KV_CACHE: dict[tuple[bytes, str, type, Any], bytes] = {}
_KV_CACHE_MAX = 4096
_VALUES_PER_KEY = 64
_KEY_VALUES: dict[tuple[bytes, str], int] = {}
# Not floats: 0.0 == -0.0 (the cache wrote the first one seen for both), NaN != NaN (never
# found again), and a float attribute is a measurement, seldom repeated.
_SCALARS = frozenset((str, bool, int))


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    parts = []
    cache, seen = _KV_CACHE, _KEY_VALUES
    for k, v in attributes.items():
        t = type(v)
        if t not in _SCALARS and not (t is tuple and all(type(x) is str for x in v)):
            parts.append(_field(tag, _kv(k, v)))  # (strings only: in a tuple, 1 == 1.0)
            continue
        ck = (tag, k, t, v)
        kv = cache.get(ck)
        if kv is None:
            kv = _field(tag, _kv(k, v))
            n = seen.get((tag, k), 0)
            if n < _VALUES_PER_KEY:
                if len(cache) >= _KV_CACHE_MAX:
                    cache.clear()
                    seen.clear()
                cache[ck] = kv
                seen[tag, k] = n + 1
        parts.append(kv)
    return b"".join(parts)


# Span.flags (field 16, fixed32): the parent is known to be remote or not.
_FLAGS_LOCAL = b"\x85\x01" + _pack_i(_HAS_IS_REMOTE)
_FLAGS_REMOTE = b"\x85\x01" + _pack_i(_HAS_IS_REMOTE | _IS_REMOTE)
_KINDS = {kind: b"\x30" + bytes((kind.value + 1,)) for kind in SpanKind}
_STATUS_UNSET = b"\x7a\x00"
_CODES = {code: code.value for code in StatusCode}  # (an enum's .value is a descriptor call)


def _count(tag: bytes, n: int) -> bytes:
    return tag + _varint(n) if n else b""


_M64 = (1 << 64) - 1
_pack_ids = struct.Struct(">HQQHQ").pack  # tag, trace id (two halves), tag, span id
_pack_parent = struct.Struct(">HQ").pack
_pack_times = struct.Struct("<BQBQ").pack  # start and end, both fixed64
_LINK_FLAGS = {
    remote: b"\x35" + _pack_i(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))
    for remote in (False, True)
}
# Encoded name fields: span names are low-cardinality by convention ("process <profile>").
_NAMES: dict[str, bytes] = {}
_NAMES_MAX = 1024


def _name(name: str) -> bytes:
    found = _NAMES.get(name)
    if found is None:
        found = _field(b"\x2a", name.encode())
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[name] = found
    return found


def _span(span: ReadableSpan) -> bytes:
    if type(span) is LeanSpan:  # its fields as they are: no property calls, no copies
        return _span_fields(
            span._context, span._parent, span._name, span._kind, span._start_time,
            span._end_time, span._attributes, span._dropped, span._events, 0, span._links, 0,
            span._status,
        )  # fmt: skip
    return _span_fields(
        span.context, span.parent, span.name, span.kind, span.start_time, span.end_time,
        span.attributes, span.dropped_attributes, span.events, span.dropped_events, span.links,
        span.dropped_links, span.status,
    )  # fmt: skip


def _span_fields(
    ctx: SpanContext | None,
    parent: SpanContext | None,
    name: str,
    kind: SpanKind,
    start: int | None,
    end: int | None,
    attributes: Mapping[str, Any] | None,
    dropped_attributes: int,
    events: Sequence[Event],
    dropped_events: int,
    links: Sequence[Link],
    dropped_links: int,
    status: Status,
) -> bytes:
    assert ctx is not None
    trace_id = ctx.trace_id
    parts = [_pack_ids(0x0A10, trace_id >> 64, trace_id & _M64, 0x1208, ctx.span_id)]
    if ctx.trace_state:
        parts.append(
            _field(b"\x1a", ",".join(f"{k}={v}" for k, v in ctx.trace_state.items()).encode())
        )
    if parent is not None:
        parts.append(_pack_parent(0x2208, parent.span_id))
    parts.append(_name(name))
    parts.append(_KINDS[kind])
    if start and end:
        parts.append(_pack_times(0x39, start, 0x41, end))
    else:
        if start:
            parts.append(b"\x39" + _pack_q(start))
        if end:
            parts.append(b"\x41" + _pack_q(end))
    parts.append(_attributes(b"\x4a", attributes))
    parts.append(_count(b"\x50", dropped_attributes))
    for event in events:
        body = b"\x09" + _pack_q(event.timestamp) if event.timestamp else b""
        body += _field(b"\x12", event.name.encode()) if event.name else b""
        body += _attributes(b"\x1a", event.attributes) + _count(b"\x20", event.dropped_attributes)
        parts.append(_field(b"\x5a", body))
    parts.append(_count(b"\x60", dropped_events))
    for link in links:
        lc = link.context
        body = _pack_ids(0x0A10, lc.trace_id >> 64, lc.trace_id & _M64, 0x1208, lc.span_id)
        if link.attributes:
            body += _attributes(b"\x22", link.attributes)
        body += _count(b"\x28", link.dropped_attributes) + _LINK_FLAGS[lc.is_remote]
        parts.append(_field(b"\x6a", body))
    parts.append(_count(b"\x70", dropped_links))
    code = _CODES[status.status_code]
    if code or status.description:
        body = _field(b"\x12", status.description.encode()) if status.description else b""
        body += b"\x18" + bytes((code,)) if code else b""
        parts.append(_field(b"\x7a", body))
    else:
        parts.append(_STATUS_UNSET)
    parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(parts)


def _resource(resource: Resource) -> bytes:
    return _attributes(b"\x0a", resource.attributes)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    body = _field(b"\x0a", scope.name.encode()) if scope.name else b""
    body += _field(b"\x12", scope.version.encode()) if scope.version else b""
    return body + _attributes(b"\x1a", scope.attributes)


def _canonical(obj: Any, by_id: dict[int, Any], distinct: list[Any]) -> Any:
    """The first object equal to ``obj`` seen in this batch, found by identity when possible:
    ``Resource.__hash__`` serialises its attributes to JSON on every call, and a process has
    one resource and a few scopes shared by all its spans."""
    found = by_id.get(id(obj), by_id)
    if found is by_id:
        found = by_id[id(obj)] = next((d for d in distinct if d == obj), obj)
        if found is obj:
            distinct.append(obj)
    return found


def _encode(spans: Sequence[ReadableSpan]) -> bytes:
    resources: dict[int, Any] = {}
    scopes: dict[int, Any] = {}
    distinct: tuple[list[Any], list[Any]] = ([], [])
    grouped: dict[int, tuple[Resource, dict[int, tuple[Any, list[bytes]]]]] = {}
    # The list of each (resource, scope) pair met, by identity: a process's spans share a
    # resource and a few scopes, so this lookup is all most spans need.
    seen: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        raw_resource, raw_scope = span.resource, span.instrumentation_scope
        key = (id(raw_resource), id(raw_scope))
        encoded = seen.get(key)
        if encoded is None:
            resource = _canonical(raw_resource, resources, distinct[0])
            scope = _canonical(raw_scope or None, scopes, distinct[1])
            group = grouped.get(id(resource))
            if group is None:
                group = grouped[id(resource)] = (resource, {})
            entry = group[1].get(id(scope))
            if entry is None:
                entry = group[1][id(scope)] = (scope, [])
            encoded = seen[key] = entry[1]
        encoded.append(_field(b"\x12", _span(span)))
    out = []
    for resource, by_scope in grouped.values():
        body = [_field(b"\x0a", _resource(resource))]
        for scope, encoded in by_scope.values():
            scope_spans = _field(b"\x0a", _scope(scope)) + b"".join(encoded)
            if scope is not None and scope.schema_url:
                scope_spans += _field(b"\x1a", scope.schema_url.encode())
            body.append(_field(b"\x12", scope_spans))
        if resource.schema_url:
            body.append(_field(b"\x1a", resource.schema_url.encode()))
        out.append(_field(b"\x0a", b"".join(body)))
    return b"".join(out)


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised ``ExportTraceServiceRequest`` for ``spans``."""
    try:
        return _encode(spans)
    except (
        _Unencodable, UnicodeEncodeError, AttributeError, TypeError, ValueError, OverflowError,
        struct.error,
    ) as exc:  # fmt: skip
        log.debug("fast OTLP encoding failed (%r); using the SDK's encoder", exc)
        data: bytes = encode_spans(spans).SerializePartialToString()
        return data


# --- the exporters ----------------------------------------------------------------------------
def _raw(data: bytes) -> bytes:
    return data


class _RawTraceStub:
    """``TraceServiceStub`` for a request that is already bytes (the stub would serialise)."""

    def __init__(self, channel: Any) -> None:
        self.Export = channel.unary_unary(
            _GRPC_METHOD,
            request_serializer=_raw,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )


class GrpcSpanExporter(_GrpcExporter):
    """The SDK's OTLP/gRPC span exporter, encoding with ``encode``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stub = _RawTraceStub  # also used when the exporter reconnects
        self._client = _RawTraceStub(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Sequence[ReadableSpan]) -> Any:
        return encode(data)


class HttpSpanExporter(_HttpExporter):
    """The SDK's OTLP/HTTP (protobuf) span exporter, encoding with ``encode``; the rest of
    ``export`` is the SDK's, step for step."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            log.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            data = encode(spans)
            if 0 < self._max_request_size < len(data):
                log.warning(
                    "dropping a span batch of %d bytes (max_request_size %d)",
                    len(data),
                    self._max_request_size,
                )
                result.error = ValueError("span batch over max_request_size")
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
