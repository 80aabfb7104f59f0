"""The executor's ownership of job tasks: jobs run as plain asyncio tasks under one supervisor
task (see ``Executor.start_many``), and the task group must still end only when they are done,
or cancel them, hand them back, and refuse new ones when the process exits at once.

No database: the handler and the completer here only record what reaches them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, cast

import anyio
import pytest

from service.handlers.base import HandlerRegistry
from service.jobs import Job
from service.worker.cancellation import Running
from service.worker.executor import Executor
from service.worker.status import ProfileStats, WorkerStatus
from tests.helpers import running_job

pytestmark = pytest.mark.anyio
PROFILE = "q"


def _job() -> Job:
    return running_job(model_profile=PROFILE)


class _Gated:
    """A handler that waits for ``release``; records starts and cancellations."""

    def __init__(self) -> None:
        self.started: list[uuid.UUID] = []
        self.cancelled: list[uuid.UUID] = []
        self.all_started = anyio.Event()
        self.release = anyio.Event()
        self.expected = 0

    async def __call__(self, job: Job) -> Any:
        self.started.append(job.id)
        if len(self.started) >= self.expected:
            self.all_started.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(job.id)
            raise
        for _ in range(10):  # finishing takes a while after the release
            await anyio.lowlevel.checkpoint()
        return {"ok": True}


class _Completer:
    def __init__(self) -> None:
        self.stored: list[uuid.UUID] = []

    async def submit(self, job: Job, encoded: Any) -> None:
        self.stored.append(job.id)


def _executor(handler: _Gated, completer: _Completer) -> Executor:
    registry = HandlerRegistry()
    registry.register(["llm_chat"], PROFILE, handler)
    return Executor(
        registry=registry,
        repo=cast(Any, None),  # only failures reach the repository; none happen here
        worker_id="w",
        running=Running(),
        completer=cast(Any, completer),
        status=WorkerStatus("w", {PROFILE: ProfileStats(capacity=8)}),
        on_slot_freed=lambda profile: None,
    )


async def test_the_task_group_ends_only_after_close_and_the_last_job() -> None:
    handler, completer = _Gated(), _Completer()
    executor = _executor(handler, completer)
    jobs = [_job(), _job(), _job()]
    handler.expected = len(jobs)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            executor.bind(tg)
            executor.start_many(jobs[:1])
            executor.start_many(jobs[1:])
            await handler.all_started.wait()
            handler.release.set()
            executor.close()
    # the task group has ended: every job had finished by then
    assert sorted(completer.stored) == sorted(j.id for j in jobs)
    assert not handler.cancelled and not executor.to_release
    assert len(executor.running) == 0
    assert executor.status.profiles[PROFILE].in_flight == 0


async def test_an_exit_at_once_cancels_running_jobs_and_hands_them_back() -> None:
    handler, completer = _Gated(), _Completer()
    executor = _executor(handler, completer)
    jobs = [_job(), _job()]
    handler.expected = len(jobs)
    late = _job()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            executor.bind(tg)
            executor.start_many(jobs)
            await handler.all_started.wait()
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + 30):
                while len(handler.cancelled) < len(jobs):
                    await anyio.lowlevel.checkpoint()
                # A claim that was already under way when the exit began: not started.
                executor.start_many([late])
    assert sorted(handler.cancelled) == sorted(j.id for j in jobs)
    assert not completer.stored
    assert sorted(j.id for j in executor.to_release) == sorted(j.id for j in [*jobs, late])
    assert late.id not in handler.started
    assert len(executor.running) == 0


async def test_a_notification_naming_another_run_of_the_job_stops_nothing() -> None:
    """A job taken back to pending and claimed here again before the notification arrived:
    the notification names the old run (its started_at), so the new run goes on."""
    running = Running()
    entry = running.add(_job())
    started_at = entry.job.started_at
    assert started_at is not None
    us = (started_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    assert not running.cancel(entry.job.id, "lost", started_us=us - 1)
    assert entry.reason is None and not entry.scope.cancel_called
    assert running.cancel(entry.job.id, "lost", started_us=us)
    assert entry.reason == "lost" and entry.scope.cancel_called


async def test_a_notification_heard_before_its_run_is_added_stops_it_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim's rows can reach the executor after the cancel that followed the claim; what
    is remembered is bounded in number and in time."""
    running = Running()
    cancelled, taken_back, other = _job(), _job(), _job()
    assert not running.cancel(cancelled.id, "cancelled")
    us = (taken_back.started_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(
        microseconds=1
    )
    assert not running.cancel(taken_back.id, "lost", started_us=us)
    assert not running.cancel(other.id, "lost", started_us=us + 1)  # another run of it
    assert running.add(cancelled).reason == "cancelled"
    assert running.add(taken_back).reason == "lost"
    assert running.add(other).reason is None
    monkeypatch.setattr("service.worker.cancellation.RECENT_MAX", 3)
    for _ in range(5):
        running.cancel(uuid.uuid4(), "cancelled")
    assert len(running._recent) == 3


async def test_the_echo_of_a_runs_own_outcome_stops_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retryable failure sends the job back to pending, which notifies the run it took
    back: that run is this one, already finished; no "cancelling" warning, nothing kept."""
    running = Running()
    entry = running.add(_job())
    assert entry.job.started_at is not None
    us = (entry.job.started_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(
        microseconds=1
    )
    entry.finished = True
    assert not running.cancel(entry.job.id, "lost", started_us=us)
    assert entry.reason is None and "cancelling" not in caplog.text and not running._recent
