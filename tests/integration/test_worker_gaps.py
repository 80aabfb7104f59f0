"""What a worker must not miss while it cannot hear: cancellations and take-backs notified
while its LISTEN connection was down, a cancel heard before the claim's rows reached the
executor, and the jobs of a claim whose reply was lost as it stopped.

In-process workers on a real PostgreSQL; the listener's gap is made by refusing new
connections to the database and terminating its backend. Leases are an hour long, so only
the mechanism under test can stop a handler within the tests' waits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from service.db import DatabaseUnavailable
from service.jobs import Job, JobFilter, JobRepository
from service.worker.main import Worker
from tests.integration.test_worker_runtime import (
    PROFILE,
    Probe,
    nj,
    registry_for,
    running_worker,
    until,
)

LISTENER = (
    "SELECT pid FROM pg_stat_activity WHERE application_name = 'ai-service-listener' "
    "AND datname = %s"
)


async def listener_gap(
    db_url: str, worker: Worker, meanwhile: Callable[[], Awaitable[Any]]
) -> None:
    """Cut the worker's LISTEN connection, run ``meanwhile`` while it cannot reconnect (its
    notifications are lost), then let it reconnect."""
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    admin = psycopg.conninfo.make_conninfo(db_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        try:
            [(pid,)] = conn.execute(LISTENER, [dbname]).fetchall()
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
            await until(lambda: worker.status.listener.state == "disconnected", what="a gap")
            await meanwhile()
        finally:
            conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    await until(lambda: worker.status.listener.state == "connected", what="the reconnect")


async def test_a_cancel_during_a_listener_gap_stops_the_handler_after_the_reconnect(
    repo: JobRepository, db_url: str
) -> None:
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)) as worker:
        job, _ = await repo.create(nj(input={"block": True}))
        await probe.started[job.id].wait()

        async def cancel() -> None:
            assert await repo.cancel_where(JobFilter(ids=[job.id])) == [job.id]

        await listener_gap(db_url, worker, cancel)
        await until(lambda: job.id in probe.cancelled, what="the handler to be stopped")
        await until(lambda: worker.status.profiles[PROFILE].in_flight == 0, what="a free slot")
    assert (await repo.get(job.id)).status == "cancelled"


async def test_a_retry_during_a_listener_gap_stops_the_run_it_took_back(
    repo: JobRepository, db_url: str
) -> None:
    """Else the run goes on while another worker runs the job again: twice at once."""
    probe = Probe()
    async with running_worker(db_url, registry_for(probe), worker_claim_limit=1) as worker:
        job, _ = await repo.create(nj(input={"gate": "g"}))
        await probe.started[job.id].wait()

        async def retry() -> None:
            await repo.retry(job.id)

        await listener_gap(db_url, worker, retry)
        await until(lambda: job.id in probe.cancelled, what="the taken-back run to be stopped")
        probe.gates["g"].set()
        done = await until(lambda: finished_once(repo, job.id), what="the job, run again")
    assert done.status == "completed"


async def finished_once(repo: JobRepository, job_id: Any) -> Job | None:
    job = await repo.get(job_id)
    return job if job.status == "completed" else None


async def test_a_cancel_heard_before_the_claims_rows_stops_the_run(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim committed, then the job was cancelled, and the cancel's notification was
    handled before the claim's rows reached the executor."""
    real = JobRepository.claim
    workers: list[Worker] = []

    async def claim(self: JobRepository, *args: Any, **kwargs: Any) -> list[Job]:
        jobs = await real(self, *args, **kwargs)
        if jobs:
            heard = workers[0].status.listener.notifications
            await repo.cancel_where(JobFilter(ids=[j.id for j in jobs]))
            await until(lambda: workers[0].status.listener.notifications > heard, what="the cancel")
        return jobs

    monkeypatch.setattr(JobRepository, "claim", claim)
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)) as worker:
        workers.append(worker)
        job, _ = await repo.create(nj(input={"block": True}))
        await until(lambda: job.id in probe.cancelled, what="the handler to be stopped")


async def test_jobs_of_a_claim_whose_reply_was_lost_as_the_worker_stops_are_released(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No claim loop runs again to release them: the final writes do, rather than leaving
    them to wait out their lease (an hour here) and lose an attempt."""
    real = JobRepository.claim
    workers: list[Worker] = []

    async def claim(self: JobRepository, *args: Any, **kwargs: Any) -> list[Job]:
        jobs = await real(self, *args, **kwargs)
        if jobs:
            workers[0].stop()  # SIGTERM arrives while the reply is lost
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        return jobs

    monkeypatch.setattr(JobRepository, "claim", claim)
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)) as worker:
        workers.append(worker)
        job, _ = await repo.create(nj())
        await until(lambda: worker.status.state == "stopped", what="the worker to stop")
    back = await repo.get(job.id)
    assert (back.status, back.worker_id, back.attempts) == ("pending", None, 0)
    assert probe.calls == []
    assert worker.status.profiles[PROFILE].released == 1
