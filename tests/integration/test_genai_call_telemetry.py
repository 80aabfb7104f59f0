"""What one inference call records, read back from an in-memory span exporter and metric reader:
a cancelled call ends its GenAI span and its duration metric alike (ERROR, ``error.type``
``cancelled``), and ``server.port`` is the real port when the URL leaves it to the scheme.

Why the simulator: the call is cancelled while the server holds it (an injected hang), the way
a job cancelled mid-inference is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from service import metrics
from service.metrics import build_instruments, names
from service.providers.client import OpenAIClient
from service.simulator import serve_simulator
from tests.helpers import captured_spans

MODEL = "qwen-test"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    with captured_spans(monkeypatch) as exporter:
        yield exporter


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    monkeypatch.setattr(metrics, "_i", build_instruments(provider.get_meter("t"), lambda m: []))
    yield reader
    provider.shutdown()


def durations(reader: InMemoryMetricReader) -> list[dict[str, Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        dict(point.attributes or {})
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == names.GEN_AI_DURATION.name
        for point in m.data.data_points
    ]


def only_chat(exporter: InMemorySpanExporter) -> ReadableSpan:
    [chat] = [s for s in exporter.get_finished_spans() if s.name == f"chat {MODEL}"]
    return chat


async def test_a_cancelled_call_ends_span_and_metric_with_the_same_error_type(
    exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    sim_options: dict[str, Any] = {"fail_rate": 1.0, "fail_kinds": ("timeout",)}
    async with (
        serve_simulator(chat_models=(MODEL,), **sim_options) as sim,
        OpenAIClient("llm", sim.url) as client,
        anyio.create_task_group() as tg,
    ):

        async def call() -> None:
            await client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])

        tg.start_soon(call)
        await sim.state.gpus[MODEL].wait_until(lambda gpu: gpu.running == 1)  # held there
        tg.cancel_scope.cancel()

    chat = only_chat(exporter)
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes is not None and chat.attributes["error.type"] == "cancelled"
    [recorded] = durations(reader)
    assert recorded["error.type"] == "cancelled"
    assert recorded["gen_ai.request.model"] == MODEL


async def test_server_port_is_the_schemes_default_when_the_url_has_none(
    exporter: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    cases = [("https://llm.example.com/v1", 443), ("http://llm.example.com/v1", 80),
             ("https://llm.example.com:8443/v1", 8443)]  # fmt: skip
    for url, port in cases:
        exporter.clear()
        async with OpenAIClient("llm", url) as client:
            with anyio.CancelScope() as scope:
                scope.cancel()  # the span is made; nothing is sent anywhere
                await client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        attrs = only_chat(exporter).attributes
        assert attrs is not None
        assert (attrs["server.address"], attrs["server.port"]) == ("llm.example.com", port), url
