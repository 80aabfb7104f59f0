"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import io
import subprocess
import time
import uuid
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import spans, telemetry
from service.db.embedded import free_port as embedded_free_port
from service.jobs import Job
from service.serve import EmbeddedServer, listen, make_server

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def running_job(**fields: Any) -> Job:
    """A job as a worker holds it once claimed (attempt 1, running), without a database;
    ``fields`` override any column."""
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "id": uuid.uuid4(), "owner_service": "t", "owner_ref": None, "task_type": "llm_chat",
        "model_profile": "q", "status": "running", "priority": 0, "attempts": 1,
        "max_attempts": 3, "input": {}, "result": None, "error_category": None,
        "error_message": None, "worker_id": "w", "lease_expires_at": now, "run_after": now,
        "idempotency_key": None, "trace_context": None, "created_at": now, "started_at": now,
        "finished_at": None, "updated_at": now,
    }  # fmt: skip
    return Job(**(row | fields))


def free_port() -> int:
    """A port for a child process to bind: below the ephemeral range, so no outgoing
    connection of the test run can take it before the child binds it."""
    return embedded_free_port()


def wait_for(check: Callable[[], T | None], *, timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns a truthy value; fail after a generous deadline.

    This waits on an outcome, it does not time anything: the deadline only bounds a hang.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str, proc: subprocess.Popen[str] | None = None) -> bool:
    if proc is not None and proc.poll() is not None:
        out = proc.stdout.read() if proc.stdout else ""
        raise AssertionError(f"process exited with {proc.returncode} before {url} was up:\n{out}")
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``proc`` for the block; killed (and its output collected) if it is still running at
    the end, so a failing test leaves no process behind."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    """A real mono 16-bit WAV file of ``seconds`` (what the transcription tests upload)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x01" * int(rate * seconds))
    return buf.getvalue()


def wav_base64(seconds: float, rate: int = 8000) -> str:
    return base64.b64encode(wav_bytes(seconds, rate)).decode()


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> bool:
    """Answer an ASGI lifespan scope (True) for the bare test apps served by ``serve_asgi``;
    False for any other scope, which the app then handles."""
    if scope["type"] != "lifespan":
        return False
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})
    return True


@asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on 127.0.0.1 (a free port) in this event loop; yields its base URL."""
    sock = listen("127.0.0.1", 0)
    server: EmbeddedServer = make_server(app, "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
    sock.close()


@contextmanager
def captured_spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """This process's spans, kept in memory: an SDK provider installed where ``telemetry``
    keeps its own, with our lean spans recording on it; undone when the block ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "t"}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "_provider", provider)
    spans.install(provider)
    try:
        yield exporter
    finally:
        spans.install(None)
