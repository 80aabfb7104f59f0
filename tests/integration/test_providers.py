"""The OpenAI-compatible client against the real simulator over real HTTP (no PostgreSQL)."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import anyio
import httpx
import pytest

from service.config import Secret
from service.handlers.base import JobTimeout, ProviderRejected, ProviderUnavailable
from service.providers.client import OpenAIClient
from service.providers.multipart import AudioUpload
from service.simulator import serve_simulator
from service.simulator.gpu import Gpu
from tests.helpers import wav_bytes

pytestmark = pytest.mark.anyio

CHAT = "qwen2.5-14b"
VOXTRAL = "mistralai/Voxtral-Small-24B-2507"
FAST = {"latency_ms": 1.0, "per_token_ms": 0.0, "per_audio_second_ms": 0.0}
HI = [{"role": "user", "content": "Hi"}]


async def until(gpu: Gpu, check: Callable[[Gpu], bool], timeout: float = 30.0) -> None:
    """Wait for the simulated GPU to reach a state; the deadline only bounds a hang."""
    with anyio.fail_after(timeout):
        await gpu.wait_until(check)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_chat_with_and_without_v1(suffix: str) -> None:
    async with serve_simulator(**FAST) as sim, OpenAIClient("llm", sim.url + suffix) as client:
        out = await client.chat(model=CHAT, messages=HI, max_tokens=5, temperature=0.2)
        assert out.model == CHAT
        assert out.choices[0].finish_reason == "length"
        assert out.choices[0].message.content
        assert out.usage.completion_tokens == 5
        assert out.usage.total_tokens == out.usage.prompt_tokens + 5
        assert await client.models() == [CHAT, VOXTRAL]
        metrics = await client.metrics()
        assert 'vllm:num_requests_running{engine="0",model_name="qwen2.5-14b"} 0.0' in metrics
        assert "vllm:e2e_request_latency_seconds_count" in metrics


async def test_json_response_format_and_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "negative"]},
            "score": {"type": "number"},
        },
    }
    async with serve_simulator(**FAST) as sim, OpenAIClient("llm", sim.url) as client:
        out = await client.chat(
            model=CHAT,
            messages=HI,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        )
        assert out.choices[0].message.content == '{"sentiment":"positive","score":0.5}'
        # As vLLM: a json_schema without a name is a 400 (the API refuses it at submission).
        with pytest.raises(ProviderRejected, match=r"json_schema\.name"):
            await client.chat(
                model=CHAT,
                messages=HI,
                response_format={"type": "json_schema", "json_schema": {"schema": schema}},
            )


async def test_transcribe_streams_multipart_and_reads_voxtral_shape() -> None:
    audio = wav_bytes(12.2)
    async with serve_simulator(**FAST) as sim, OpenAIClient("voxtral", sim.url + "/v1") as client:
        out = await client.transcribe(
            AudioUpload.from_bytes(audio, 'call "1".wav', "audio/wav"),
            model=VOXTRAL,
            language="ru",
            prompt="Transcribe the call.",
        )
        assert out.usage is not None
        assert out.usage.seconds == 13  # vLLM rounds the duration up
        assert out.segments is None
        assert re.search("[\\u0400-\\u04ff]", out.text)  # language=ru gave a Russian transcript
        text = await client.transcribe(
            AudioUpload.from_bytes(audio, "a.wav"), model=VOXTRAL, response_format="text"
        )
        assert text.text.strip()


async def test_voxtral_refuses_verbose_json_and_large_files() -> None:
    async with (
        serve_simulator(max_upload_bytes=10_000, **FAST) as sim,
        OpenAIClient("voxtral", sim.url) as client,
    ):
        with pytest.raises(ProviderRejected) as err:
            await client.transcribe(
                AudioUpload.from_bytes(wav_bytes(0.1)),
                model=VOXTRAL,
                response_format="verbose_json",
            )
        assert f"Currently do not support verbose_json for {VOXTRAL}" in str(err.value)
        with pytest.raises(ProviderRejected, match="Maximum file size exceeded"):
            await client.transcribe(AudioUpload.from_bytes(wav_bytes(2.0)), model=VOXTRAL)


async def test_429_is_retryable_and_carries_retry_after() -> None:
    async with (
        serve_simulator(fail_rate=1.0, fail_kinds=("429",), retry_after_s=7, **FAST) as sim,
        OpenAIClient("llm", sim.url) as client,
    ):
        with pytest.raises(ProviderUnavailable) as err:
            await client.chat(model=CHAT, messages=HI)
        assert err.value.retryable
        assert err.value.category == "provider_unavailable"
        assert err.value.retry_after == 7.0
        assert "HTTP 429" in str(err.value)
        assert err.value.provider_wide  # the server is busy for every job: pause claiming


async def test_503_is_retryable_and_seeded_failures_are_reproducible() -> None:
    async def outcomes() -> list[str]:
        results = []
        async with (
            serve_simulator(fail_rate=0.5, fail_kinds=("503",), seed=42, **FAST) as sim,
            OpenAIClient("llm", sim.url) as client,
        ):
            for _ in range(12):
                try:
                    await client.chat(model=CHAT, messages=HI)
                    results.append("ok")
                except ProviderUnavailable as exc:
                    results.append(f"{str(exc).split(':')[0]} retry {exc.retry_after}")
        return results

    first = await outcomes()
    assert set(first) == {"ok", "llm answered HTTP 503 retry 1.0"}
    assert await outcomes() == first


async def test_marker_fails_a_request_a_given_number_of_times() -> None:
    messages = [{"role": "user", "content": "Summarise [simulate:503x2]"}]
    async with serve_simulator(**FAST) as sim, OpenAIClient("llm", sim.url) as client:
        for _ in range(2):
            with pytest.raises(ProviderUnavailable):
                await client.chat(model=CHAT, messages=messages)
        assert (await client.chat(model=CHAT, messages=messages)).choices


async def test_400_is_rejected_with_the_providers_message() -> None:
    async with (
        serve_simulator(max_model_len=100, **FAST) as sim,
        OpenAIClient("llm", sim.url) as client,
    ):
        with pytest.raises(ProviderRejected) as err:
            await client.chat(model=CHAT, messages=HI, max_tokens=500)
        assert not err.value.retryable
        assert err.value.category == "provider_rejected"
        assert "HTTP 400" in str(err.value)
        assert "maximum context length is 100 tokens" in str(err.value)
        assert not err.value.provider_wide  # this request was wrong, not the server
        with pytest.raises(ProviderRejected, match="The model `nope` does not exist") as err:
            await client.chat(model="nope", messages=HI)
        assert err.value.provider_wide  # a 404 for the model: every job would get it


async def test_timeout_is_a_job_timeout_and_frees_the_slot() -> None:
    messages = [{"role": "user", "content": "[simulate:timeout]"}]
    async with serve_simulator(capacity=1, **FAST) as sim, OpenAIClient("llm", sim.url) as client:
        with pytest.raises(JobTimeout) as err:
            await client.chat(model=CHAT, messages=messages, timeout=0.2)
        assert err.value.retryable
        assert "did not answer within 0.2s" in str(err.value)
        # The simulator noticed the client leave and gave the only slot back.
        await until(sim.state.gpus[CHAT], lambda g: g.running == 0)
        assert (await client.chat(model=CHAT, messages=HI)).choices


async def test_connection_refused_is_provider_unavailable() -> None:
    with socket.socket() as holder:  # bound, never listening: connections are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        async with OpenAIClient("llm", f"http://127.0.0.1:{port}/v1") as client:
            with pytest.raises(ProviderUnavailable, match="is unreachable") as err:
                await client.chat(model=CHAT, messages=HI)
            assert err.value.provider_wide


async def test_api_key_is_sent_and_never_shown() -> None:
    key = "sk-live-very-secret"
    async with serve_simulator(api_key=key, **FAST) as sim:
        async with OpenAIClient("llm", sim.url, api_key=Secret(key)) as good:
            assert (await good.chat(model=CHAT, messages=HI)).choices
        async with OpenAIClient("llm", sim.url, api_key=Secret("sk-wrong-key")) as bad:
            with pytest.raises(ProviderRejected) as err:
                await bad.chat(model=CHAT, messages=HI)
        assert "HTTP 401" in str(err.value)
        assert "Unauthorized" in str(err.value)
        assert err.value.provider_wide
        assert "sk-" not in str(err.value)


async def test_every_response_is_marked_simulated() -> None:
    async with serve_simulator(**FAST) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        for method, path in [("GET", "/health"), ("GET", "/v1/models"), ("GET", "/metrics"),
                             ("GET", "/nowhere"), ("POST", "/v1/chat/completions")]:  # fmt: skip
            response = await http.request(method, path)
            assert response.headers["x-simulated"] == "true", path
        bad = await http.post("/v1/chat/completions", content=b"{")
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == 400


async def test_simulator_runs_capacity_requests_and_queues_the_rest() -> None:
    hang = [{"role": "user", "content": "[simulate:timeout]"}]
    async with (
        serve_simulator(capacity=2, **FAST) as sim,
        OpenAIClient("llm", sim.url, max_connections=8) as client,
    ):
        gpu = sim.state.gpus[CHAT]
        answers: list[str] = []
        hanging = anyio.CancelScope()

        async def hang_two() -> None:
            with hanging:
                async with anyio.create_task_group() as both:
                    for _ in range(2):
                        both.start_soon(lambda: client.chat(model=CHAT, messages=hang, timeout=60))

        async with anyio.create_task_group() as tg:
            tg.start_soon(hang_two)
            await until(gpu, lambda g: g.running == 2)

            async def normal() -> None:
                out = await client.chat(model=CHAT, messages=HI, timeout=60)
                answers.append(out.choices[0].finish_reason or "")

            tg.start_soon(normal)
            await until(gpu, lambda g: g.waiting == 1)
            metrics = await client.metrics()
            assert 'vllm:num_requests_running{engine="0",model_name="qwen2.5-14b"} 2.0' in metrics
            assert 'vllm:num_requests_waiting{engine="0",model_name="qwen2.5-14b"} 1.0' in metrics
            assert answers == []
            # Abandon the hanging requests: their slots go to the queued one, which completes.
            hanging.cancel()
        assert answers == ["stop"]
        await until(gpu, lambda g: g.running == 0 and g.waiting == 0)
