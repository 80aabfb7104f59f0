"""Built-in handlers end to end against the simulator over real HTTP (no PostgreSQL)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from service.config import Settings
from service.handlers.base import (
    Handler,
    HandlerRegistry,
    InvalidOutput,
    ProviderRejected,
    ProviderUnavailable,
)
from service.handlers.builtin import builtin_registry
from service.jobs.model import Job
from service.simulator import serve_simulator
from tests.helpers import running_job
from tests.integration.test_audio_safety import AUDIO, audio_server

pytestmark = pytest.mark.anyio

FAST = {"latency_ms": 1.0, "per_token_ms": 0.0, "per_audio_second_ms": 0.0}


def job(task_type: str, profile: str, data: dict[str, Any]) -> Job:
    return running_job(
        owner_service="tests", task_type=task_type, model_profile=profile, input=data,
        lease_expires_at=None,
    )  # fmt: skip


@asynccontextmanager
async def handlers(**env: str) -> AsyncIterator[HandlerRegistry]:
    async with serve_simulator(**FAST) as sim:
        settings = Settings.from_env(
            {"LLM_BASE_URL": sim.url + "/v1", "VOXTRAL_BASE_URL": sim.url, **env}
        )
        registry, closeables = builtin_registry(settings, max_connections=4)
        try:
            yield registry
        finally:
            for c in closeables:
                await c.aclose()


def route(registry: HandlerRegistry, task_type: str, profile: str) -> Handler:
    handler = registry.lookup(task_type, profile)
    assert handler is not None
    return handler


async def test_registry_follows_the_seed_rule() -> None:
    async with handlers() as registry:
        assert registry.profiles() == ["qwen2.5-14b", "voxtral-small"]
        assert registry.task_types("qwen2.5-14b") == [
            "llm_chat",
            "chat_completion",
            "call_analysis",
        ]
        assert registry.task_types("voxtral-small") == ["transcribe", "transcription"]
    assert builtin_registry(Settings.from_env({}))[0].profiles() == []


@pytest.mark.parametrize("task_type", ["llm_chat", "chat_completion", "call_analysis"])
@pytest.mark.parametrize(
    "data",
    [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Classify this text"}], "max_tokens": 8},
        {"system": "Be brief.", "user": "Classify this text", "max_tokens": 8},
    ],
)  # fmt: skip
async def test_llm_result_shape(task_type: str, data: dict[str, Any]) -> None:
    async with handlers() as registry:
        result = await route(registry, task_type, "qwen2.5-14b")(
            job(task_type, "qwen2.5-14b", data)
        )
    assert set(result) == {"content", "model", "usage", "finish_reason", "duration_ms"}
    assert result["model"] == "qwen2.5-14b"
    assert result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 8
    assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + 8
    assert isinstance(result["duration_ms"], int)


async def test_json_that_does_not_parse_is_invalid_output() -> None:
    async with handlers() as registry:
        handler = route(registry, "call_analysis", "qwen2.5-14b")
        ok = await handler(
            job("call_analysis", "qwen2.5-14b",
                {"user": "Rate it", "response_format": {"type": "json_object"}, "call_id": "7"})
        )  # fmt: skip
        assert ok["content"].startswith("{")
        with pytest.raises(InvalidOutput, match="not valid JSON") as err:
            await handler(
                job("call_analysis", "qwen2.5-14b",
                    {"user": "[simulate:invalid_json]", "response_format": {"type": "json_object"}})
            )  # fmt: skip
        assert err.value.retryable
        short = {"user": "Rate it", "max_tokens": 2, "response_format": {"type": "json_object"}}
        with pytest.raises(InvalidOutput, match="max_tokens cut the answer short"):
            await handler(job("llm_chat", "qwen2.5-14b", short))


async def test_a_generation_the_server_aborted_is_retried_not_stored() -> None:
    async with handlers() as registry:
        handler = route(registry, "llm_chat", "qwen2.5-14b")
        with pytest.raises(ProviderUnavailable, match="finish_reason='abort'") as err:
            await handler(job("llm_chat", "qwen2.5-14b", {"user": "Sum up [simulate:abortx1]"}))
        assert err.value.retryable
        again = await handler(job("llm_chat", "qwen2.5-14b", {"user": "Sum up [simulate:abortx1]"}))
        assert again["finish_reason"] == "stop"


async def test_provider_rejection_keeps_its_message() -> None:
    async with handlers(LLM_MODEL="not-served") as registry:
        with pytest.raises(ProviderRejected, match="The model `not-served` does not exist"):
            await route(registry, "llm_chat", "not-served")(
                job("llm_chat", "not-served", {"user": "Hi"})
            )


async def test_transcription_from_base64_with_diarization() -> None:
    data = {"audio_base64": base64.b64encode(AUDIO).decode(), "language": "en",
            "diarization": True, "num_speakers": 2, "call_id": "beeline/1"}  # fmt: skip
    async with handlers() as registry:
        result = await route(registry, "transcribe", "voxtral-small")(
            job("transcribe", "voxtral-small", data)
        )
    assert set(result) == {"text", "language", "duration_s", "segments", "model", "duration_ms"}
    assert result["model"] == "mistralai/Voxtral-Small-24B-2507"
    assert result["language"] == "en"
    assert result["duration_s"] == pytest.approx(3.0)  # read from the WAV header
    segments = result["segments"]
    assert segments
    assert segments[-1]["end"] == pytest.approx(3.0)
    assert " ".join(s["text"] for s in segments).split() == result["text"].split()
    assert {s["speaker"] for s in segments} <= {"SPEAKER_00", "SPEAKER_01"}


async def test_transcription_from_url_without_diarization() -> None:
    async with (
        audio_server() as base,
        handlers(AUDIO_URL_ALLOWED_NETWORKS="127.0.0.1/32") as registry,
    ):
        handler = route(registry, "transcription", "voxtral-small")
        result = await handler(
            job("transcription", "voxtral-small", {"audio_url": f"{base}/call.wav"})
        )
    assert result["text"]
    assert result["language"] is None
    assert all("speaker" not in s for s in result["segments"])
