"""Jobs end to end: submitted over HTTP to the real API → a real worker with the built-in
handlers → the simulated GPU server over HTTP → the result stored and read back over HTTP.

Every part is real (uvicorn servers on 127.0.0.1, PostgreSQL, the worker's LISTEN/claim/lease
machinery); only the model is simulated. Failures are injected per job with the simulator's
``[simulate:KIND]`` / ``[simulate:KINDxN]`` markers. Tests wait for outcomes with the API's
long-poll, never by sleeping; the one time-related check (Retry-After) is a lower bound.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import httpx
import pytest

from service.config import Settings
from service.handlers.builtin import builtin_registry
from service.simulator import serve_simulator
from service.simulator.server import RunningSimulator
from service.worker.main import Worker
from tests.integration.api_server import running_api
from tests.integration.test_audio_safety import AUDIO, audio_server
from tests.integration.test_worker_runtime import until

pytestmark = pytest.mark.anyio

LLM = "qwen2.5-14b"
VOXTRAL = "voxtral-small"
FAST = {"latency_ms": 1.0, "per_token_ms": 0.0, "per_audio_second_ms": 0.0, "retry_after_s": 0}
TERMINAL = {"completed", "failed", "cancelled"}
CHAT_KEYS = {"content", "model", "usage", "finish_reason", "duration_ms"}
TRANSCRIPT_KEYS = {"text", "language", "duration_s", "segments", "model", "duration_ms"}


@dataclass
class Stack:
    api: httpx.AsyncClient
    sim: RunningSimulator
    audio_url: str
    worker: Worker

    async def submit(self, task_type: str, profile: str, data: dict[str, Any]) -> str:
        body = {"owner_service": "e2e", "task_type": task_type, "model_profile": profile,
                "input": data}  # fmt: skip
        r = await self.api.post("/api/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        job_id: str = r.json()["id"]
        return job_id

    async def outcome(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The job once it is completed, failed or cancelled (long-poll; bounded only so a
        hang fails the test instead of the run)."""
        with anyio.fail_after(timeout):
            while True:
                r = await self.api.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": 10})
                assert r.status_code == 200, r.text
                job: dict[str, Any] = r.json()
                if job["status"] in TERMINAL:
                    return job

    async def run(self, task_type: str, profile: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self.outcome(await self.submit(task_type, profile, data))


@asynccontextmanager
async def stack(db_url: str, sim: dict[str, Any] | None = None, **env: str) -> AsyncIterator[Stack]:
    async with serve_simulator(**{**FAST, **(sim or {})}) as simulator, audio_server() as audio:
        settings = Settings.from_env(
            {
                "LLM_BASE_URL": simulator.url + "/v1",
                "VOXTRAL_BASE_URL": simulator.url,
                "AUDIO_URL_ALLOWED_NETWORKS": "127.0.0.0/8",
                "JOB_MAX_ATTEMPTS": "3",
                "RETRY_BACKOFF_BASE": "0s",
                "RETRY_BACKOFF_MAX": "0s",
                "WORKER_HTTP_HOST": "127.0.0.1",
                "WORKER_HTTP_PORT": "0",
                "WORKER_CLAIM_LIMIT": "8",
                "DB_POOL_SIZE": "4",
                **env,
            }
        )
        registry, clients = builtin_registry(settings)
        assert registry.profiles() == [LLM, VOXTRAL]
        worker = Worker(settings, db_url, registry.profiles(), registry, clients=clients)
        async with running_api(db_url, settings) as api, anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            try:
                yield Stack(api.client, simulator, audio, worker)
            finally:
                worker.stop()


def chat_inputs(text: str) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": text}], "max_tokens": 16},
        {"system": "Be brief.", "user": text, "max_tokens": 16},
    ]  # fmt: skip


def seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


# --- every task type completes ------------------------------------------------------------------
async def test_llm_task_types_with_messages_and_system_user(db_url: str) -> None:
    async with stack(db_url) as s:
        ids = {
            (task, i): await s.submit(task, LLM, {**data, "call_id": "beeline/1"})
            if task == "call_analysis"
            else await s.submit(task, LLM, data)
            for task in ("llm_chat", "chat_completion", "call_analysis")
            for i, data in enumerate(chat_inputs("Classify this text"))
        }
        jobs = {key: await s.outcome(job_id) for key, job_id in ids.items()}
    for key, job in jobs.items():
        assert job["status"] == "completed", (key, job["error_message"])
        assert job["attempts"] == 1
        result = job["result"]
        assert set(result) == CHAT_KEYS, key
        assert result["model"] == LLM and result["content"]
        assert result["usage"]["completion_tokens"] == 16
        assert result["finish_reason"] == "length"


async def test_transcription_task_types_from_url_and_base64_with_and_without_diarization(
    db_url: str,
) -> None:
    b64 = base64.b64encode(AUDIO).decode()
    async with stack(db_url) as s:
        ids = {}
        for task in ("transcribe", "transcription"):
            for source in ("url", "base64"):
                for diarization in (True, False):
                    data: dict[str, Any] = (
                        {"audio_url": f"{s.audio_url}/call.wav"}
                        if source == "url"
                        else {"audio_base64": b64, "language": "en"}
                    )
                    data |= {"diarization": diarization, "num_speakers": 2}
                    ids[(task, source, diarization)] = await s.submit(task, VOXTRAL, data)
        jobs = {key: await s.outcome(job_id) for key, job_id in ids.items()}
    for (task, source, diarization), job in jobs.items():
        key = (task, source, diarization)
        assert job["status"] == "completed", (key, job["error_message"])
        result = job["result"]
        assert set(result) == TRANSCRIPT_KEYS, key
        assert result["model"] == "mistralai/Voxtral-Small-24B-2507"
        assert result["text"]
        assert result["duration_s"] == pytest.approx(3.0)
        assert result["language"] == ("en" if source == "base64" else None)
        segments = result["segments"]
        assert segments and segments[-1]["end"] == pytest.approx(3.0)
        speakers = {seg.get("speaker") for seg in segments}
        if diarization:
            assert speakers <= {"SPEAKER_00", "SPEAKER_01"} and None not in speakers, key
        else:
            assert speakers == {None}, key


# --- failures and retries -----------------------------------------------------------------------
async def test_injected_503s_are_retried_and_the_job_completes(db_url: str) -> None:
    async with stack(db_url) as s:
        chat = await s.run("llm_chat", LLM, {"user": "Summarise [simulate:503x2]"})
    assert chat["status"] == "completed"
    assert chat["attempts"] == 3
    assert set(chat["result"]) == CHAT_KEYS
    # Transcriptions re-upload the audio on each attempt (the marker rides in the prompt).
    async with stack(db_url, AUDIO_LLM_PROMPT="Transcribe. [simulate:503x1]") as s:
        text = await s.run("transcribe", VOXTRAL, {"audio_url": f"{s.audio_url}/call.wav"})
    assert text["status"] == "completed", text["error_message"]
    assert text["attempts"] == 2
    assert set(text["result"]) == TRANSCRIPT_KEYS


async def test_a_503_on_every_attempt_ends_failed_as_provider_unavailable(db_url: str) -> None:
    async with stack(db_url, JOB_MAX_ATTEMPTS="2") as s:
        job = await s.run("llm_chat", LLM, {"user": "Hi [simulate:503]"})
    assert job["status"] == "failed"
    assert job["attempts"] == 2
    assert job["error_category"] == "provider_unavailable"
    assert "HTTP 503" in job["error_message"]


async def test_retry_after_of_a_429_is_honoured(db_url: str) -> None:
    # The simulator's 429 says Retry-After: 1 while our own backoff is 0 s: the second
    # attempt may not start before the second is up (a lower bound, not a timing guess).
    async with stack(db_url, {"retry_after_s": 1}) as s:
        job = await s.run("chat_completion", LLM, {"user": "Hi [simulate:429x1]"})
    assert job["status"] == "completed"
    assert job["attempts"] == 2
    assert seconds_between(job["created_at"], job["started_at"]) >= 1.0


async def test_a_400_from_the_provider_is_final_with_its_message(db_url: str) -> None:
    async with stack(db_url) as s:
        job = await s.run("llm_chat", LLM, {"user": "Hi [simulate:400]"})
        too_long = await s.run("llm_chat", LLM, {"user": "Hi", "max_tokens": 40000})
    assert job["status"] == "failed"
    assert job["attempts"] == 1  # not retried
    assert job["error_category"] == "provider_rejected"
    assert "HTTP 400" in job["error_message"]
    assert "Invalid request (simulated)." in job["error_message"]
    assert too_long["status"] == "failed" and too_long["error_category"] == "provider_rejected"
    assert "maximum context length is 32768 tokens" in too_long["error_message"]


async def test_a_timeout_ends_timeout_after_max_attempts(db_url: str) -> None:
    async with stack(db_url, LLM_TIMEOUT="300ms", JOB_MAX_ATTEMPTS="2") as s:
        job = await s.run("llm_chat", LLM, {"user": "Hi [simulate:timeout]"})
    assert job["status"] == "failed"
    assert job["attempts"] == 2
    assert job["error_category"] == "timeout"
    assert "did not answer within 0.3s" in job["error_message"]


async def test_invalid_output_is_retried_once(db_url: str) -> None:
    json_out = {"response_format": {"type": "json_object"}}
    async with stack(db_url, JOB_MAX_ATTEMPTS="5") as s:
        always = await s.submit(
            "call_analysis", LLM, {"user": "[simulate:invalid_json]", **json_out}
        )
        once = await s.submit(
            "call_analysis", LLM, {"user": "[simulate:invalid_jsonx1]", **json_out}
        )
        always_job, once_job = await s.outcome(always), await s.outcome(once)
    assert always_job["status"] == "failed"
    assert always_job["error_category"] == "invalid_output"
    assert always_job["attempts"] == 2  # retried once, although 5 attempts were allowed
    assert "not valid JSON" in always_job["error_message"]
    assert once_job["status"] == "completed"
    assert once_job["attempts"] == 2
    assert once_job["result"]["content"].startswith("{")


async def test_cancel_over_http_stops_the_running_call_to_the_inference_server(
    db_url: str,
) -> None:
    """POST /api/v1/jobs/cancel on a running job: the worker hears it (NOTIFY), cancels the
    handler, and the request to the GPU server is dropped there (its slot is free again)."""
    async with stack(db_url, LLM_TIMEOUT="1h") as s:
        gpu = s.sim.state.gpus[LLM]
        job_id = await s.submit("llm_chat", LLM, {"user": "Hi [simulate:timeout]"})
        with anyio.fail_after(60):
            await gpu.wait_until(lambda g: g.running == 1)  # the call is on the "GPU"
        r = await s.api.post("/api/v1/jobs/cancel", json={"ids": [job_id]})
        assert r.status_code == 200, r.text
        job = await s.outcome(job_id)
        with anyio.fail_after(60):
            await gpu.wait_until(lambda g: g.running == 0 and g.waiting == 0)
        stats = s.worker.status.profiles[LLM]
        # the handler was stopped and its result (none) dropped
        await until(lambda: stats.discarded == 1, what="the handler to be stopped")
    assert (job["status"], job["attempts"], job["result"]) == ("cancelled", 1, None)
    assert stats.completed == 0 and stats.failed == 0
