"""A worker's log lines about one job carry its id as a field (``job_id``), not only in the
message text, and the executor's last-resort line also carries the job's trace: a log search
by job id or a jump from the line to its trace must find them.

Records are read through the production ``ContextFilter`` (as the JSON formatter sees them);
jobs are real rows on a real PostgreSQL, claimed the way a worker claims them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.handlers.base import HandlerRegistry
from service.jobs import Job, JobRepository, NewJob
from service.logs import ContextFilter
from service.worker.cancellation import Running
from service.worker.completer import Completer
from service.worker.executor import Executor
from service.worker.lease import LeaseKeeper
from service.worker.status import ProfileStats, WorkerStatus
from tests.helpers import captured_spans

PROFILE = "logs-q"


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.INFO, logger="ai_service")
    return caplog


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    with captured_spans(monkeypatch) as exporter:
        yield exporter


async def claimed(repo: JobRepository, worker_id: str = "w") -> Job:
    await repo.create(NewJob(owner_service="t", task_type="llm_chat", model_profile=PROFILE))
    [job] = await repo.claim(PROFILE, worker_id, limit=1, lease_seconds=60)
    return job


def about(records: pytest.LogCaptureFixture, text: str) -> logging.LogRecord:
    [record] = [r for r in records.records if text in r.getMessage()]
    return record


def status() -> WorkerStatus:
    return WorkerStatus("w", {PROFILE: ProfileStats(capacity=4)})


class _BrokenCompleter:
    """A bug past the handler: what reaches the executor's last-resort ``except``."""

    async def submit(self, job: Job, encoded: Any) -> None:
        raise RuntimeError("completer bug")


async def test_an_unexpected_executor_failure_is_logged_with_job_id_and_trace(
    repo: JobRepository, records: pytest.LogCaptureFixture, exporter: InMemorySpanExporter
) -> None:
    async def handler(job: Job) -> Any:
        return {"ok": True}

    registry = HandlerRegistry()
    registry.register(["llm_chat"], PROFILE, handler)
    job = await claimed(repo)
    executor = Executor(
        registry=registry,
        repo=repo,
        worker_id="w",
        running=Running(),
        completer=_BrokenCompleter(),  # type: ignore[arg-type]
        status=status(),
        on_slot_freed=lambda profile: None,
    )
    async with anyio.create_task_group() as tg:
        executor.bind(tg)
        executor.start_many([job])
        executor.close()

    record = about(records, "executing job")
    [process] = [s for s in exporter.get_finished_spans() if s.name == f"process {PROFILE}"]
    assert record.job_id == str(job.id)  # type: ignore[attr-defined]
    assert record.trace_id == format(process.context.trace_id, "032x")  # type: ignore[attr-defined]
    assert record.span_id == format(process.context.span_id, "016x")  # type: ignore[attr-defined]
    assert process.attributes is not None and process.attributes["error.type"] == "RuntimeError"


async def test_completer_lines_about_one_job_carry_its_id(
    repo: JobRepository, records: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused, unknown = await claimed(repo), await claimed(repo)
    completer = Completer(repo, "w", status())
    real = repo.complete_many

    async def complete_many(worker_id: str, items: Any, started: Any = None) -> set[Any]:
        if any(job_id == unknown.id for job_id, _ in items):
            raise RuntimeError("an error of no known kind")
        return await real(worker_id, items, started)

    monkeypatch.setattr(repo, "complete_many", complete_many)
    await completer.submit(refused, msgspec.Raw(b'{"t": "\\u0000"}'))  # jsonb refuses it
    await completer.submit(unknown, msgspec.Raw(b'{"ok": true}'))
    assert not await completer.flush_once()  # the unknown one stays queued

    assert about(records, "cannot be stored").job_id == str(refused.id)  # type: ignore[attr-defined]
    retried = about(records, "storing the result of job")
    assert retried.job_id == str(unknown.id)  # type: ignore[attr-defined]
    assert (await repo.get(refused.id)).error_category == "invalid_output"


async def test_a_lost_lease_line_carries_the_job_id(
    repo: JobRepository, records: pytest.LogCaptureFixture
) -> None:
    job = await claimed(repo, worker_id="someone-else")
    running = Running()
    entry = running.add(job)
    await LeaseKeeper(repo, "w", running, lease_seconds=60).renew()
    assert entry.reason == "lost"
    assert about(records, "lease of job").job_id == str(job.id)  # type: ignore[attr-defined]


async def test_a_run_whose_own_outcome_ended_its_lease_is_not_called_lost(
    repo: JobRepository, records: pytest.LogCaptureFixture
) -> None:
    """The renewal and the run's own failure cross: the job went back to pending by this
    worker's hand, so the renewal does not find it. That is no lost lease (the soak saw one
    logged and counted per such crossing); the run is left to finish its bookkeeping."""
    job = await claimed(repo)
    running = Running()
    entry = running.add(job)
    entry.finished = True  # the handler returned; its failure is being recorded
    failed = await repo.fail(
        job.id,
        "w",
        error_category="timeout",
        error_message="t",
        retryable=True,
        started_at=job.started_at,
    )
    assert failed.status == "pending"
    await LeaseKeeper(repo, "w", running, lease_seconds=60).renew()
    assert entry.reason is None
    assert not [r for r in records.records if "lease of job" in r.getMessage()]
