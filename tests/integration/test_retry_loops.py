"""The loops that retry for the life of a process: how often they try again, and that nothing
they meet ends them.

- A due job another transaction holds locked (a bulk cancel, an operator's open ``BEGIN``) was
  looked at every 10 ms for as long as the lock lasted: two queries per profile per worker.
- An error the API's or the worker's LISTEN loop did not expect ended it: in the API, the
  lifespan with it (long polls, the reaper). A failed claim that was not a database outage
  was retried at every notification, its 5 s backoff skipped.
- Each listener started its backoff over the moment it connected, so a server that accepts
  connections and drops them at once was reconnected to tens of times a second.

Real PostgreSQL; the failures are injected by replacing a call with one that raises.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import psycopg
import pytest

from service import backoff
from service.api import hub as api_hub
from service.db import DatabaseUnavailable
from service.db.listen import ListenConnection
from service.jobs import Job, JobRepository
from service.worker import claimer, listener
from tests.integration.api_server import running_api
from tests.integration.test_worker_runtime import (
    PROFILE,
    Probe,
    finished,
    nj,
    registry_for,
    running_worker,
    until,
)


class Recorded(backoff.Backoff):
    """A backoff that keeps what it handed out (every instance, by its initial delay)."""

    made: list[Recorded] = []

    def __init__(self, initial: float = 0.05, maximum: float = 5.0) -> None:
        super().__init__(initial, maximum)
        self.delays: list[float] = []
        Recorded.made.append(self)

    def next(self) -> float:
        delay = super().next()
        self.delays.append(delay)
        return delay


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    Recorded.made = []
    for module in (claimer, listener, api_hub):
        monkeypatch.setattr(module, "Backoff", Recorded)
    return Recorded.made


async def test_a_due_job_held_locked_is_looked_at_less_and_less_often(
    repo: JobRepository, db_url: str, recorded: list[Recorded]
) -> None:
    job, _ = await repo.create(nj())
    with psycopg.connect(db_url) as held:  # an open transaction holds the due job's row
        held.execute("SELECT 1 FROM ai_jobs WHERE id = %s FOR UPDATE", [job.id])
        async with running_worker(db_url, registry_for(Probe())) as worker:
            [locked] = [b for b in recorded if b.initial == claimer.LOCKED_RETRY]
            await until(lambda: len(locked.delays) >= 6, what="six looks at the locked job")
            # 5-10 ms at first, doubling: the sixth wait is 160-320 ms, not 10 ms again
            assert locked.delays[5] >= 16 * claimer.LOCKED_RETRY, locked.delays
            assert (await repo.get(job.id)).status == "pending"
            held.rollback()  # the lock goes: the job is taken within a wait (at most 1 s)
            done = await until(lambda: finished(repo, job.id), what="the job once free")
            assert (done.status, done.worker_id) == ("completed", worker.worker_id)


async def test_a_failed_claim_that_is_not_an_outage_keeps_its_backoff_on_notifications(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a database outage a notification ends the backoff (the database answers again);
    after an error of another kind it says nothing, and the backoff is kept."""
    armed: list[bool] = []
    real_claim = JobRepository.claim

    async def claim(self: JobRepository, *args: Any, **kwargs: Any) -> list[Job]:
        if armed and armed.pop():
            raise RuntimeError("a bug, not an outage")
        return await real_claim(self, *args, **kwargs)

    pauses: list[bool] = []
    paused = anyio.Event()
    real_pause = claimer.ClaimLoop._pause

    async def pause(self: claimer.ClaimLoop, seconds: float, *, on_hint: bool = True) -> None:
        pauses.append(on_hint)
        paused.set()
        await real_pause(self, seconds, on_hint=on_hint)

    monkeypatch.setattr(JobRepository, "claim", claim)
    monkeypatch.setattr(claimer.ClaimLoop, "_pause", pause)
    async with running_worker(db_url, registry_for(Probe())) as worker:
        armed.append(True)
        worker._loops[PROFILE].notify()  # a claim, which fails
        with anyio.fail_after(30):
            await paused.wait()
        job, _ = await repo.create(nj())  # and the loop claims again after its backoff
        await until(lambda: finished(repo, job.id), what="a job after the failed claim")
    assert pauses == [False]


def fails(real: Any, failures: list[int], times: int = 3) -> Any:
    """``ListenConnection.connect`` that raises what no one expects the first ``times``."""

    async def connect(url: str, channels: Any = ()) -> ListenConnection:
        if len(failures) < times:
            failures.append(1)
            raise RuntimeError("not known to happen")
        return await real(url, channels)  # type: ignore[no-any-return]

    return connect


def tracebacks(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.exc_info]


async def test_an_unexpected_error_does_not_end_the_api_listener(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=api_hub.log.name)
    failures: list[int] = []
    monkeypatch.setattr(
        api_hub.ListenConnection, "connect", fails(ListenConnection.connect, failures)
    )
    async with running_api(db_url) as api:
        hub = api.app.state.hub
        await until(lambda: hub.connected, what="the long-poll listener after the error")
        assert failures == [1, 1, 1]
        r = await api.client.get("/readyz")  # the lifespan (reaper, long polls) lives on
        assert r.status_code == 200
    # the same error three times: one traceback, not one per try
    assert len(tracebacks(caplog, api_hub.log.name)) == 1, caplog.text
    assert "long-poll listener connected again" in caplog.text


async def test_an_unexpected_error_does_not_end_the_worker_listener(
    repo: JobRepository,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[int] = []
    monkeypatch.setattr(
        listener.ListenConnection, "connect", fails(ListenConnection.connect, failures)
    )
    async with running_worker(db_url, registry_for(Probe())):
        job, _ = await repo.create(nj())  # heard, and run
        assert (await until(lambda: finished(repo, job.id), what="a job")).status == "completed"
        assert failures == [1, 1, 1]
    [line] = tracebacks(caplog, listener.log.name)  # one, not one per try
    assert line.getMessage().startswith("listener disconnected: cannot connect"), line


async def test_a_connection_dropped_at_once_does_not_start_the_backoff_over(
    db_url: str, monkeypatch: pytest.MonkeyPatch, recorded: list[Recorded]
) -> None:
    drops: list[int] = []

    async def drop(self: Any, conn: ListenConnection) -> None:
        drops.append(1)
        raise DatabaseUnavailable("server closed the connection unexpectedly")

    monkeypatch.setattr(api_hub.NotifyHub, "_receive", drop)
    async with running_api(db_url):
        [hub_backoff] = [b for b in recorded if b.initial == 0.05]
        await until(lambda: len(drops) >= 5, what="five dropped connections")
        # 25-50 ms, doubling each time: not 25-50 ms after every connection
        assert hub_backoff.delays[4] >= 0.4, hub_backoff.delays
