"""Tracing end to end: real ``ai-service api`` and ``ai-service worker`` processes export over
OTLP/gRPC to a real in-process receiver; the simulator (in this process) plays vLLM.

Everything asserted comes from what crossed the wire: the spans the receiver decoded, the
serialised requests searched for leaks, and the ``traceparent`` headers the simulator saw.
Waits are on outcomes (a job finished, spans arrived) with generous deadlines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from service.config import FIELDS
from service.simulator.server import RunningSimulator, serve_simulator
from tests.helpers import ROOT, free_port, http_ok, wait_for
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow

TOKEN = "tok-9f1c2e7b-do-not-leak"
LLM_KEY = "llm-key-4a8d3c1e-do-not-leak"
PROMPT = "Describe the violet okapi 5c0ffee in one line"
PROFILE = "qwen2.5-14b"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


class Proc:
    def __init__(self, command: str, env: dict[str, str], log: Path, port: int) -> None:
        self.command, self.log_path, self.port = command, log, port
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", command],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def ready(self, path: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.command} exited early:\n{self.log()}")
        return http_ok(f"http://127.0.0.1:{self.port}{path}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def base_env(db_url: str) -> dict[str, str]:
    """The test's environment without any setting or OTEL_* variable of the shell, on a
    migrated database, with the API token set."""
    drop = {f.env for f in FIELDS}
    clean = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("OTEL_")}
    return {**clean, "DATABASE_URL": db_url, "MIGRATE_ON_START": "false", "AI_SERVICE_TOKEN": TOKEN}


def service_env(db_url: str, sim: RunningSimulator, otel: dict[str, str]) -> dict[str, str]:
    return {
        **base_env(db_url),
        "LLM_BASE_URL": sim.url,
        "LLM_API_KEY": LLM_KEY,
        "LLM_MODEL": PROFILE,
        "WORKER_POLL_INTERVAL": "1h",
        "WORKER_CLAIM_LIMIT": "8",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",  # the most a log line could ever say, checked below
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **otel,
    }


@asynccontextmanager
async def stack(
    db_url: str, tmp: Path, otel: dict[str, str], **sim_options: Any
) -> AsyncIterator[tuple[RunningSimulator, httpx.AsyncClient, Proc, Proc]]:
    """Simulator (here) + API and worker processes; SIGTERM both on the way out."""
    async with serve_simulator(api_key=LLM_KEY, **sim_options) as sim:
        env = service_env(db_url, sim, otel)
        api_port, worker_port = free_port(), free_port()
        api = Proc(
            "api",
            {**env, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(api_port)},
            tmp / "api.log",
            api_port,
        )
        worker = Proc(
            "worker",
            {**env, "WORKER_HTTP_HOST": "127.0.0.1", "WORKER_HTTP_PORT": str(worker_port)},
            tmp / "worker.log",
            worker_port,
        )
        try:
            await anyio.to_thread.run_sync(
                lambda: wait_for(
                    lambda: api.ready("/healthz") and worker.ready("/readyz"), what="api and worker"
                )
            )
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=90
            ) as client:
                yield sim, client, api, worker
        finally:
            for p in (api, worker):
                if p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait()


async def finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    with anyio.fail_after(120):
        while True:
            r = await client.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": 30})
            body: dict[str, Any] = r.json()
            if body["status"] in ("completed", "failed", "cancelled"):
                return body


def by_name(spans: list[ReceivedSpan], prefix: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def test_one_trace_from_submission_to_the_gpu_call(
    db_url: str, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    async with stack(db_url, tmp_path, otel) as (sim, client, api, worker):
        r = await client.post(
            "/api/v1/jobs",
            json={
                "owner_service": "telephony",
                "task_type": "llm_chat",
                "model_profile": PROFILE,
                "input": {"user": PROMPT},
            },
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        job = await finished(client, job_id)
        assert job["status"] == "completed", job
        # SIGTERM: the processes flush their span queues on the way out.
        assert await anyio.to_thread.run_sync(api.stop) == 0, api.log()
        assert await anyio.to_thread.run_sync(worker.stop) == 0, worker.log()
        seen = list(sim.state.traceparents)

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans}
        return {f"send {PROFILE}", f"process {PROFILE}", f"chat {PROFILE}"} <= names and any(
            s.attrs.get("http.route") or s.name.startswith("POST") for s in spans
        )

    spans = await anyio.to_thread.run_sync(lambda: receiver.wait_for(complete))
    [send] = by_name(spans, f"send {PROFILE}")
    [process] = by_name(spans, f"process {PROFILE}")
    [chat] = by_name(spans, f"chat {PROFILE}")
    [server] = [s for s in spans if s.name.startswith("POST") and s.trace_id == send.trace_id]
    receives = [
        s
        for s in by_name(spans, f"receive {PROFILE}")
        if s.attrs.get("messaging.batch.message_count")
    ]
    trace_id = send.trace_id

    # One trace: server span -> send; stored context -> process -> chat.
    assert {server.trace_id, process.trace_id, chat.trace_id} == {trace_id}
    assert send.parent_id == server.span_id
    assert process.parent_id == send.span_id
    assert [link.span_id.hex() for link in process.span.links] == [send.span_id]
    assert chat.parent_id == process.span_id
    assert server.service == "ai-service-api"
    assert {process.service, chat.service} == {"ai-service-worker"}
    assert receives, "a receive span for the claim round that took the job"

    # Kinds (proto enum: 2 server, 3 client, 4 producer, 5 consumer).
    assert (server.span.kind, send.span.kind, process.span.kind, chat.span.kind) == (2, 4, 5, 3)

    # The simulator (as vLLM) got that trace in traceparent, from the chat span.
    assert [trace_id, chat.span_id] in [tp.split("-")[1:3] for tp in seen]

    assert {
        "messaging.system": "ai-service",
        "messaging.operation.type": "send",
        "messaging.destination.name": f"ai_jobs:{PROFILE}",
        "messaging.message.id": job_id,
    }.items() <= send.attrs.items()
    assert process.attrs["messaging.system"] == "ai-service"
    assert process.attrs["messaging.operation.type"] == "process"
    assert process.attrs["messaging.destination.name"] == f"ai_jobs:{PROFILE}"
    assert process.attrs["messaging.message.id"] == job_id
    assert process.attrs["ai_service.job.task_type"] == "llm_chat"
    assert process.attrs["ai_service.job.owner_service"] == "telephony"
    assert process.attrs["ai_service.job.attempt"] == 1
    assert process.attrs["ai_service.job.queue_wait_ms"] >= 0
    assert receives[0].attrs["messaging.operation.type"] == "receive"

    usage = job["result"]["usage"]
    assert chat.attrs["gen_ai.operation.name"] == "chat"
    assert chat.attrs["gen_ai.provider.name"] == "vllm"
    assert chat.attrs["gen_ai.request.model"] == PROFILE
    assert chat.attrs["gen_ai.response.model"] == PROFILE
    assert chat.attrs["gen_ai.response.id"].startswith("chatcmpl-")
    assert chat.attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert chat.attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert chat.attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat.attrs["server.address"] == "127.0.0.1"
    assert "error.type" not in chat.attrs

    # Database spans only under traced work (here: the insert under send).
    db_spans = [s for s in spans if s.scope.startswith("opentelemetry.instrumentation.psycopg")]
    assert db_spans and all(s.parent_id for s in db_spans)

    # Probes are not traced.
    assert not [s for s in spans if "healthz" in s.name or "readyz" in s.name]

    # Nothing secret or private crossed the wire.
    raw = receiver.raw()
    for secret in (TOKEN, LLM_KEY, PROMPT, "violet okapi", job["result"]["content"][:40]):
        assert secret.encode() not in raw, f"{secret!r} leaked into the export"
    # ...nor reached a log line; and the job's log lines carry its trace.
    for p in (api, worker):
        assert TOKEN not in p.log() and LLM_KEY not in p.log() and PROMPT not in p.log()


async def test_each_job_of_a_batch_continues_its_own_create_span(
    db_url: str, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
    async with stack(db_url, tmp_path, otel) as (_, client, api, worker):
        item = {"owner_service": "t", "task_type": "llm_chat", "model_profile": PROFILE,
                "input": {"user": "hi"}}  # fmt: skip
        r = await client.post("/api/v1/jobs/batch", json={"jobs": [item, item]})
        assert r.status_code == 201, r.text
        ids = [i["id"] for i in r.json()["items"]]
        for job_id in ids:
            assert (await finished(client, job_id))["status"] == "completed"
        assert await anyio.to_thread.run_sync(worker.stop) == 0, worker.log()
        assert await anyio.to_thread.run_sync(api.stop) == 0, api.log()

    def complete(spans: list[ReceivedSpan]) -> bool:
        return len(by_name(spans, "process")) == 2 and len(by_name(spans, "create")) == 2

    spans = await anyio.to_thread.run_sync(lambda: receiver.wait_for(complete))
    [send] = by_name(spans, f"send {PROFILE}")
    assert send.span.kind == 3  # CLIENT: the create spans are the creation contexts
    assert send.attrs["messaging.batch.message_count"] == 2
    creates = {s.attrs["messaging.message.id"]: s for s in by_name(spans, f"create {PROFILE}")}
    processes = {s.attrs["messaging.message.id"]: s for s in by_name(spans, f"process {PROFILE}")}
    assert sorted(creates) == sorted(processes) == sorted(ids)
    for job_id in ids:
        create, process = creates[job_id], processes[job_id]
        assert create.span.kind == 4 and create.parent_id == send.span_id
        assert process.trace_id == send.trace_id
        assert process.parent_id == create.span_id  # its own context, not the batch's
        assert [link.span_id.hex() for link in process.span.links] == [create.span_id]


async def test_capture_content_records_prompt_and_answer_only_when_asked(
    db_url: str, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint, "OTEL_CAPTURE_CONTENT": "true"}
    async with stack(db_url, tmp_path, otel) as (_, client, api, worker):
        body = {"owner_service": "t", "task_type": "llm_chat", "model_profile": PROFILE,
                "input": {"user": PROMPT}}  # fmt: skip
        job = await finished(client, (await client.post("/api/v1/jobs", json=body)).json()["id"])
        assert job["status"] == "completed"
        assert await anyio.to_thread.run_sync(worker.stop) == 0
        assert await anyio.to_thread.run_sync(api.stop) == 0
    spans = await anyio.to_thread.run_sync(lambda: receiver.wait_for(lambda s: by_name(s, "chat")))
    [chat] = by_name(spans, "chat")
    assert PROMPT in chat.attrs["gen_ai.input.messages"]
    assert job["result"]["content"] in chat.attrs["gen_ai.output.messages"]
    assert TOKEN.encode() not in receiver.raw() and LLM_KEY.encode() not in receiver.raw()


async def test_a_failed_provider_call_marks_the_spans_without_leaking(
    db_url: str, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
    async with stack(db_url, tmp_path, otel, fail_rate=1.0, fail_kinds=("503",)) as parts:
        _, client, api, worker = parts
        body = {
            "owner_service": "t",
            "task_type": "llm_chat",
            "model_profile": PROFILE,
            "input": {"user": PROMPT},
            "max_attempts": 1,
        }
        job_id = (await client.post("/api/v1/jobs", json=body)).json()["id"]
        job = await finished(client, job_id)
        assert job["status"] == "failed"
        assert await anyio.to_thread.run_sync(worker.stop) == 0
        assert await anyio.to_thread.run_sync(api.stop) == 0

    spans = await anyio.to_thread.run_sync(
        lambda: receiver.wait_for(lambda s: by_name(s, "chat") and by_name(s, "process"))
    )
    [chat], [process] = by_name(spans, "chat"), by_name(spans, "process")
    category = job["error_category"]
    assert chat.attrs["error.type"] == category == process.attrs["error.type"]
    assert chat.span.status.code == process.span.status.code == 2  # ERROR
    assert [e.name for e in chat.span.events] == ["exception"]
    assert PROMPT.encode() not in receiver.raw()
    lines = [ln for ln in worker.log().splitlines() if job_id in ln and '"trace_id"' in ln]
    assert lines, "the failure's log line carries job_id and trace_id"
    assert chat.trace_id in lines[0]


async def test_a_dead_collector_never_holds_up_jobs(
    db_url: str, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    await jobs_complete_despite(db_url, tmp_path, receiver, "down")


async def test_a_stuck_collector_never_holds_up_jobs(
    db_url: str, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    await jobs_complete_despite(db_url, tmp_path, receiver, "stuck")


async def jobs_complete_despite(
    db_url: str, tmp_path: Path, receiver: OtlpReceiver, collector: str
) -> None:
    """600 jobs through API and worker while every export fails or hangs (a parametrized
    coroutine test would not collect here, hence two tests)."""
    if collector == "stuck":
        receiver.hold()  # every Export blocks until the end of the test
        endpoint = receiver.endpoint
    else:
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_MAX_QUEUE_SIZE": "256",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64",
    }
    try:
        async with stack(db_url, tmp_path, otel, latency_ms=1, per_token_ms=0) as parts:
            _, client, api, worker = parts
            item = {
                "owner_service": "t",
                "task_type": "llm_chat",
                "model_profile": PROFILE,
                "input": {"user": "hi"},
            }
            for _ in range(3):  # several rounds: exports are attempted while jobs run
                r = await client.post("/api/v1/jobs/batch", json={"jobs": [item] * 200})
                assert r.status_code == 201, r.text
                for i in r.json()["items"]:
                    assert (await finished(client, i["id"]))["status"] == "completed"
            # Exit stays prompt and clean: the flush on shutdown is bounded.
            assert await anyio.to_thread.run_sync(worker.stop) == 0, worker.log()
            assert await anyio.to_thread.run_sync(api.stop) == 0, api.log()
    finally:
        receiver.release()
