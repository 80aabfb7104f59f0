"""A real OTLP/gRPC trace receiver, in-process, for tests and the tracing bench.

It is a gRPC server on 127.0.0.1:<free port> implementing ``TraceService/Export`` from
opentelemetry-proto, so what a test inspects is exactly what crossed the wire. ``hold()``
makes every Export block (a stuck collector) until ``release()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass
class ReceivedSpan:
    service: str
    scope: str
    span: Span

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def attrs(self) -> dict[str, Any]:
        return {kv.key: value_of(kv.value) for kv in self.span.attributes}


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(  # the gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.receiver._open.wait()
        with self.receiver._lock:
            self.receiver.requests.append(request)
            self.receiver._changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._open = threading.Event()
        self._open.set()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        add_servicer = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_servicer(_Servicer(self), self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._open.set()
        self._server.stop(grace=None)

    def hold(self) -> None:
        """Every Export from now on blocks until ``release()`` (a stuck collector)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def raw(self) -> bytes:
        """Every request as serialised on the wire, concatenated (to search for leaks)."""
        with self._lock:
            return b"".join(r.SerializeToString() for r in self.requests)

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            requests = list(self.requests)
        return list(_flatten(requests))

    def wait_for(self, check: Any, timeout: float = 60.0) -> list[ReceivedSpan]:
        """Block until ``check(spans)`` is truthy (woken by each Export); fail after
        ``timeout`` — which only bounds a hang, it times nothing."""
        with self._changed:
            ok = self._changed.wait_for(lambda: check(list(_flatten(self.requests))), timeout)
        if not ok:
            names = sorted({s.name for s in self.spans()})
            raise AssertionError(f"timed out waiting for spans; received: {names}")
        return self.spans()


def _flatten(requests: list[Any]) -> Iterator[ReceivedSpan]:
    for request in requests:
        for rs in request.resource_spans:
            attrs = {kv.key: value_of(kv.value) for kv in rs.resource.attributes}
            service = str(attrs.get("service.name", ""))
            for ss in rs.scope_spans:
                for span in ss.spans:
                    yield ReceivedSpan(service, ss.scope.name, span)
