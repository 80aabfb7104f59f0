"""The simulator answers odd but well-formed requests as vLLM does — a 400 naming the problem,
not a 500, a process out of memory or an answer longer than the model's context — since tests,
benchmarks and `make run` take its answers for a GPU server's. Real HTTP, no PostgreSQL."""

from __future__ import annotations

import struct
from typing import Any

import httpx
import pytest

from service.simulator import serve_simulator

pytestmark = pytest.mark.anyio

CHAT = "qwen2.5-14b"
VOXTRAL = "mistralai/Voxtral-Small-24B-2507"
FAST = {"latency_ms": 1.0, "per_token_ms": 0.0, "per_audio_second_ms": 0.0}


def schema(value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": value}}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], **fields}


async def test_odd_chat_requests_are_400s_naming_the_problem() -> None:
    nested = {
        "type": "array",
        "minItems": 2000,
        "items": {"type": "array", "minItems": 2000, "items": {"type": "array", "minItems": 2000}},
    }  # fmt: skip  (114 bytes: 8e9 items)
    bad = [
        (chat(messages=[{"role": ["user"], "content": "Hi"}]), "valid role"),
        (chat(response_format=schema({"enum": {"a": 1}})), "enum"),
        (chat(response_format=schema({"type": "array", "minItems": "two"})), "minItems"),
        (chat(response_format=schema(nested)), "more than"),
    ]
    async with serve_simulator(**FAST) as sim, httpx.AsyncClient(base_url=sim.url) as client:
        for body, says in bad:
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 400, (body, r.status_code, r.text[:200])
            assert says in r.json()["error"]["message"], r.text
            assert r.headers["x-simulated"] == "true"
        # and malformed ones: JSON nested past the decoder's depth, a form field not UTF-8
        deep = b"[" * 10_000 + b"]" * 10_000
        r = await client.post("/v1/chat/completions", content=deep)
        assert r.status_code == 400 and "nested too deeply" in r.text, r.text
        form = {"model": VOXTRAL, "language": b"\xff"}
        r = await client.post(
            "/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")}, data=form
        )
        assert r.status_code == 400 and "not UTF-8" in r.text, r.text


async def test_an_answer_without_max_tokens_stops_at_the_context_length() -> None:
    long = schema({"type": "array", "minItems": 9000, "items": {"type": "integer"}})
    async with serve_simulator(**FAST, max_model_len=2048) as sim, httpx.AsyncClient(
        base_url=sim.url
    ) as client:  # fmt: skip
        r = await client.post("/v1/chat/completions", json=chat(response_format=long))
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["choices"][0]["finish_reason"] == "length"
    assert done["usage"]["total_tokens"] <= 2048


def wav_claiming(data_bytes: int, rate: int = 1, actual: bytes = b"") -> bytes:
    """A WAV header whose data chunk claims ``data_bytes``, followed by ``actual`` only."""
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    head = b"RIFF" + struct.pack("<I", min(0xFFFFFFFF, 36 + data_bytes)) + b"WAVE" + fmt
    return head + b"data" + struct.pack("<I", data_bytes) + actual


async def test_a_wav_header_is_not_taken_at_its_word() -> None:
    """44 bytes claiming 4 GB of 1 Hz audio: a transcript of 4e9 seconds was built (minutes
    of a blocked event loop, then out of memory)."""
    wav = wav_claiming(0xFFFFFFF0, actual=bytes(8))
    async with serve_simulator(**FAST) as sim, httpx.AsyncClient(base_url=sim.url) as client:
        r = await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav, "audio/wav")},
            data={"model": VOXTRAL},
        )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["seconds"] <= len(wav) // 2  # no more 2-byte frames than bytes


async def test_a_queued_request_whose_client_leaves_leaves_the_queue() -> None:
    """vLLM aborts a request waiting for its batch when the client disconnects; the
    simulator kept it queued (and counted in ``num_requests_waiting``) until a slot freed."""
    import anyio

    hang = chat(messages=[{"role": "user", "content": "[simulate:timeout]"}])
    async with (
        serve_simulator(capacity=1, **FAST) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=60) as client,
        anyio.create_task_group() as tg,
    ):
        gpu = sim.state.gpus[CHAT]

        async def hanging() -> None:  # holds the only slot
            await client.post("/v1/chat/completions", json=hang)

        tg.start_soon(hanging)
        with anyio.fail_after(30):
            await gpu.wait_until(lambda g: g.running == 1)
        leaving = anyio.CancelScope()

        async def queued() -> None:
            with leaving:
                await client.post("/v1/chat/completions", json=chat())

        tg.start_soon(queued)
        with anyio.fail_after(30):
            await gpu.wait_until(lambda g: g.waiting == 1)
        leaving.cancel()  # the client gives up and closes its connection
        with anyio.fail_after(30):
            await gpu.wait_until(lambda g: g.waiting == 0)
        assert gpu.running == 1  # the hanging one still holds its slot
        tg.cancel_scope.cancel()
