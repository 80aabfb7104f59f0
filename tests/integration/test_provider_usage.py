"""Token counts an OpenAI-compatible server leaves out: vLLM types ``completion_tokens`` as
optional and some gateways answer ``"usage": null``. The generation is finished and kept; a
count that was not sent is stored as null and recorded nowhere as 0. A real HTTP server."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from service import metrics
from service.handlers.llm import LlmHandler
from service.metrics import build_instruments, names
from service.providers.client import OpenAIClient
from tests.helpers import captured_spans, lifespan, running_job, serve_asgi

pytestmark = pytest.mark.anyio

MESSAGE = {"role": "assistant", "content": "Done."}


def completion(**usage: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": MESSAGE}],
    }  # fmt: skip
    body.update(usage)
    return msgspec.json.encode(body)


def answering(body: bytes) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def run_chat(body: bytes) -> dict[str, Any]:
    job = running_job(
        owner_service="tests", task_type="llm_chat", model_profile="m",
        input={"user": "Hi"}, lease_expires_at=None,
    )  # fmt: skip
    async with serve_asgi(answering(body)) as url, OpenAIClient("llm", url) as client:
        return await LlmHandler(client, "m")(job)


def token_counts(reader: InMemoryMetricReader) -> dict[str, int]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        str((point.attributes or {})["gen_ai.token.type"]): int(point.sum)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == names.GEN_AI_TOKENS.name
        for point in m.data.data_points
    }


@pytest.mark.parametrize(
    ("usage", "stored"),
    [
        ({"usage": None}, {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}),
        ({}, {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}),
        ({"usage": {"prompt_tokens": 7, "completion_tokens": None}},
         {"prompt_tokens": 7, "completion_tokens": None, "total_tokens": None}),
        ({"usage": {"prompt_tokens": 7, "completion_tokens": 3}},
         {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}),
        ({"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 11}},
         {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 11}),
    ],
)  # fmt: skip
async def test_a_completion_without_some_counts_is_kept(
    usage: dict[str, Any], stored: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    monkeypatch.setattr(metrics, "_i", build_instruments(provider.get_meter("t"), lambda m: []))
    with captured_spans(monkeypatch) as spans:
        result = await run_chat(completion(**usage))
    recorded = token_counts(reader)
    provider.shutdown()
    sent = {"input": stored["prompt_tokens"], "output": stored["completion_tokens"]}
    assert recorded == {kind: n for kind, n in sent.items() if n is not None}
    assert result["content"] == "Done." and result["usage"] == stored
    (span,) = [s for s in spans.get_finished_spans() if s.name == "chat m"]
    attrs = dict(span.attributes or {})
    assert attrs.get("gen_ai.usage.input_tokens") == stored["prompt_tokens"]
    assert attrs.get("gen_ai.usage.output_tokens") == stored["completion_tokens"]
