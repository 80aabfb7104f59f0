"""The worker runtime in-process on a real PostgreSQL: wake-up, capacity, failures,
cancellation, lost leases, reaping, reconnects, shutdown and the HTTP endpoints.

Tests wait on events and database outcomes (with generous deadlines that only bound a hang);
none sleeps for timing or asserts a duration. A 1 h fallback poll proves that wake-ups come
from NOTIFY (or the catch-up claim), never from polling.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import anyio
import httpx
import psycopg
import pytest

from service.config import Settings
from service.handlers.base import HandlerRegistry, ProviderRejected, ProviderUnavailable
from service.jobs import Job, JobFilter, JobRepository, NewJob
from service.jobs.reaper import MIN_WAIT_S, Reaper
from service.worker.main import Worker, process_worker_id

T = TypeVar("T")
PROFILE = "qwen2.5-14b"
OTHER = "voxtral-small"


class Probe:
    """A handler driven by the job's input that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[UUID, int]] = []
        self.started: defaultdict[UUID, anyio.Event] = defaultdict(anyio.Event)
        self.cancelled: set[UUID] = set()
        self.gates: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
        self.concurrent = 0
        self.max_concurrent = 0

    async def __call__(self, job: Job) -> Any:
        self.calls.append((job.id, job.attempts))
        self.started[job.id].set()
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        inp = job.input
        try:
            if "gate" in inp:
                await self.gates[inp["gate"]].wait()
            if "shielded_gate" in inp:  # a handler that finishes even when told to stop
                with anyio.CancelScope(shield=True):
                    await self.gates[inp["shielded_gate"]].wait()
                return {"late": True}
            if inp.get("block"):
                await anyio.sleep_forever()
            if inp.get("raise") and job.attempts in inp.get("on_attempts", [job.attempts]):
                raise {
                    "rejected": ProviderRejected("bad request: 400"),
                    "unavailable": ProviderUnavailable("busy: 503"),
                    "boom": RuntimeError("handler bug"),
                }[inp["raise"]]
            if "result" in inp:
                return inp["result"]
            if inp.get("nul"):  # valid JSON that PostgreSQL's jsonb refuses
                return {"text": "nul \x00 byte"}
            if inp.get("not_json"):
                return {"x": object()}
            return {"echo": inp, "attempt": job.attempts}
        except anyio.get_cancelled_exc_class():
            self.cancelled.add(job.id)
            raise
        finally:
            self.concurrent -= 1


def registry_for(probe: Probe, *profiles: str) -> HandlerRegistry:
    registry = HandlerRegistry()
    for p in profiles or (PROFILE,):
        registry.register(["llm_chat", "call_analysis"], p, probe)
    return registry


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "worker_id": "test",
        "worker_http_host": "127.0.0.1",
        "worker_http_port": 0,
        "worker_poll_interval": 3600.0,  # wake-ups must not depend on polling
        "worker_lease_timeout": 3600.0,
        "worker_claim_limit": 4,
        "worker_shutdown_grace": 30.0,
        "retry_backoff_base": 0.0,
        "retry_backoff_max": 0.0,
        "db_pool_size": 4,
    }
    return Settings(**{**base, **overrides})


async def until(check: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """Re-check until truthy; the deadline only bounds a hang, it times nothing."""
    try:
        with anyio.fail_after(timeout):
            while True:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from None


def idle(worker: Worker) -> bool:
    return worker.status.listener.state in ("connected", "disabled") and all(
        s.state == "idle" for s in worker.status.profiles.values()
    )


@asynccontextmanager
async def running_worker(
    db_url: str, registry: HandlerRegistry, profiles: list[str] | None = None, **overrides: Any
) -> AsyncIterator[Worker]:
    worker = Worker(settings(**overrides), db_url, profiles or [PROFILE], registry)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(lambda: idle(worker), what="the worker to idle")
        try:
            yield worker
        finally:
            worker.stop()


def nj(task_type: str = "llm_chat", profile: str = PROFILE, **kw: Any) -> NewJob:
    return NewJob(owner_service="t", task_type=task_type, model_profile=profile, **kw)


async def finished(repo: JobRepository, job_id: UUID) -> Job | None:
    job = await repo.get(job_id)
    return job if job.status in ("completed", "failed", "cancelled") else None


async def get_all(repo: JobRepository, ids: list[UUID]) -> list[Job]:
    return [await repo.get(i) for i in ids]


# --- wake-up and capacity ---------------------------------------------------------------------
async def test_job_inserted_while_idle_starts_without_waiting_for_the_poll(
    repo: JobRepository, db_url: str
) -> None:
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)) as worker:
        job, _ = await repo.create(nj(input={"n": 1}))
        done = await until(lambda: finished(repo, job.id), what="the job to finish")
        assert worker.status.profiles[PROFILE].completed == 1
    assert done.status == "completed"
    assert done.result == {"echo": {"n": 1}, "attempt": 1}
    assert done.worker_id == worker.worker_id
    assert probe.calls == [(job.id, 1)]


async def test_claims_only_free_capacity_and_refills_without_a_wakeup(
    repo: JobRepository, db_url: str
) -> None:
    # Queued before the worker starts: no NOTIFY will ever arrive for these; the startup
    # catch-up claims the first batch, each freed slot must claim the next job at once.
    ids = [i for i, _ in await repo.create_batch([nj(input={"gate": "g"}) for _ in range(10)])]
    probe = Probe()
    worker = Worker(settings(worker_claim_limit=3), db_url, [PROFILE], registry_for(probe))
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(lambda: len(probe.calls) == 3, what="3 jobs to start")
        running, _ = await repo.list_jobs(JobFilter(status=["running"]))
        assert len(running) == 3  # claimed only what it had room for
        probe.gates["g"].set()
        await until(lambda: worker.status.profiles[PROFILE].completed == 10, what="all jobs")
        worker.stop()
    assert probe.max_concurrent == 3
    assert sorted(i for i, _ in probe.calls) == sorted(ids)
    assert {j.status for j in await get_all(repo, ids)} == {"completed"}


async def test_profiles_have_their_own_loops_and_capacity(repo: JobRepository, db_url: str) -> None:
    probe = Probe()
    registry = registry_for(probe, PROFILE, OTHER)
    async with running_worker(
        db_url, registry, [PROFILE, OTHER], worker_claim_limits={OTHER: 1}
    ) as worker:
        await repo.create_batch([nj(profile=OTHER, input={"gate": "o"}) for _ in range(2)])
        await until(lambda: len(probe.calls) == 1, what="the first voxtral job")
        # the other profile's queue is full; this one is not blocked by it
        job, _ = await repo.create(nj())
        await until(lambda: finished(repo, job.id), what="the qwen job")
        assert worker.status.profiles[OTHER].in_flight == 1
        probe.gates["o"].set()
        await until(lambda: worker.status.profiles[OTHER].completed == 2, what="voxtral jobs")


async def test_a_delayed_job_runs_when_it_becomes_due(repo: JobRepository, db_url: str) -> None:
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)):
        due = datetime.now(UTC) + timedelta(seconds=0.5)
        job, _ = await repo.create(nj(run_after=due))
        done = await until(lambda: finished(repo, job.id), what="the delayed job")
    assert done.status == "completed"
    assert done.started_at is not None and done.started_at >= done.run_after


# --- outcomes -----------------------------------------------------------------------------
async def test_task_types_left_to_external_workers_stay_pending(
    repo: JobRepository, db_url: str
) -> None:
    """``WORKER_EXTERNAL_TASK_TYPES``: a domain service's own worker claims them through the
    API; the built-in worker neither runs nor fails them, nor claims in a loop while they wait
    (they do not count as due work)."""
    probe = Probe()
    async with running_worker(
        db_url, registry_for(probe), worker_external_task_types=("tg_analysis",)
    ) as worker:
        external, _ = await repo.create(nj(task_type="tg_analysis"))
        ours, _ = await repo.create(nj(input={"n": 1}))
        await until(lambda: finished(repo, ours.id), what="the built-in job")
        assert await repo.seconds_until_due(PROFILE, skip_types=["tg_analysis"]) is None
        assert await repo.seconds_until_due(PROFILE) is not None
        assert worker.status.profiles[PROFILE].claimed == 1
    left = await repo.get(external.id)
    assert (left.status, left.attempts, left.worker_id) == ("pending", 0, None)
    assert probe.calls == [(ours.id, 1)]


async def test_handler_failures_are_recorded_with_their_category(
    repo: JobRepository, db_url: str
) -> None:
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)):
        rejected, _ = await repo.create(nj(input={"raise": "rejected"}))
        flaky, _ = await repo.create(
            nj(input={"raise": "boom", "on_attempts": [1]}, max_attempts=2)
        )
        exhausted, _ = await repo.create(nj(input={"raise": "unavailable"}, max_attempts=2))
        unsupported, _ = await repo.create(nj(task_type="translate"))
        not_json, _ = await repo.create(nj(input={"not_json": True}, max_attempts=1))
        ids = [rejected.id, flaky.id, exhausted.id, unsupported.id, not_json.id]
        for i in ids:
            await until(lambda i=i: finished(repo, i), what=f"job {i}")
    jobs = {j.id: j for j in await get_all(repo, ids)}
    assert (jobs[rejected.id].status, jobs[rejected.id].error_category) == (
        "failed",
        "provider_rejected",
    )
    assert jobs[rejected.id].attempts == 1  # not retryable
    assert (jobs[flaky.id].status, jobs[flaky.id].attempts) == ("completed", 2)
    assert (jobs[exhausted.id].status, jobs[exhausted.id].error_category) == (
        "failed",
        "provider_unavailable",
    )
    assert jobs[exhausted.id].attempts == 2
    assert (jobs[unsupported.id].status, jobs[unsupported.id].error_category) == (
        "failed",
        "unsupported_task",
    )
    assert jobs[unsupported.id].attempts == 1
    assert unsupported.id not in {i for i, _ in probe.calls}
    assert (jobs[not_json.id].status, jobs[not_json.id].error_category) == ("failed", "internal")


async def test_one_unstorable_result_does_not_block_its_batch(
    repo: JobRepository, db_url: str
) -> None:
    probe = Probe()
    async with running_worker(db_url, registry_for(probe), worker_claim_limit=8):
        jobs = [
            *(nj(input={"result": {"i": i}}) for i in range(5)),
            nj(input={"nul": True}, max_attempts=1),
        ]
        ids = [i for i, _ in await repo.create_batch(jobs)]
        for i in ids:
            await until(lambda i=i: finished(repo, i), what=f"job {i}")
    stored = await get_all(repo, ids)
    assert [j.result for j in stored[:5]] == [{"i": i} for i in range(5)]
    assert (stored[5].status, stored[5].error_category) == ("failed", "invalid_output")


# --- cancellation and leases --------------------------------------------------------------
async def test_cancelling_a_running_job_stops_its_handler(repo: JobRepository, db_url: str) -> None:
    # The lease is an hour (renewals every 20 min): only the cancel NOTIFY can stop it here.
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)) as worker:
        job, _ = await repo.create(nj(input={"block": True}))
        await probe.started[job.id].wait()
        await repo.cancel_where(JobFilter(ids=[job.id]))
        await until(lambda: job.id in probe.cancelled, what="the handler to be cancelled")
        await until(lambda: worker.status.profiles[PROFILE].discarded == 1, what="discard")
        assert worker.status.profiles[PROFILE].in_flight == 0
    assert (await repo.get(job.id)).status == "cancelled"


async def test_retrying_a_running_job_stops_the_run_that_held_it(
    repo: JobRepository, db_url: str
) -> None:
    """The seed allows retrying a running job. Its holder used to learn at its next lease
    renewal (20 min here) while another claim ran the job too; the NOTIFY of migration 0005
    stops the old run at once, and the job's next run is not stopped by it."""
    probe = Probe()
    async with running_worker(db_url, registry_for(probe), worker_claim_limit=1) as worker:
        job, _ = await repo.create(nj(input={"gate": "g"}))
        await probe.started[job.id].wait()
        await repo.retry(job.id)
        await until(lambda: job.id in probe.cancelled, what="the old run to be stopped")
        await until(lambda: len(probe.calls) == 2, what="the job to run again")
        probe.gates["g"].set()
        done = await until(lambda: finished(repo, job.id), what="the new run to complete")
        assert worker.status.profiles[PROFILE].discarded == 1
    assert (done.status, done.attempts, done.worker_id) == ("completed", 1, worker.worker_id)


async def steal(db_url: str, job_id: UUID) -> None:
    """Another worker holds the job now (as after a reap and a new claim)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE ai_jobs SET worker_id = 'thief', lease_expires_at = now() + interval '1h'"
            " WHERE id = %s",
            (job_id,),
        )


async def test_a_lost_lease_cancels_the_handler(repo: JobRepository, db_url: str) -> None:
    probe = Probe()
    async with running_worker(db_url, registry_for(probe), worker_lease_timeout=3.0):
        job, _ = await repo.create(nj(input={"block": True}))
        await probe.started[job.id].wait()
        await steal(db_url, job.id)
        await until(lambda: job.id in probe.cancelled, what="the heartbeat to notice")
    stolen = await repo.get(job.id)
    assert (stolen.status, stolen.worker_id, stolen.result) == ("running", "thief", None)


async def test_a_result_that_arrives_after_the_lease_was_lost_is_dropped(
    repo: JobRepository, db_url: str
) -> None:
    """A handler that returns anyway (it ignored the cancellation) must not overwrite the job
    another worker now holds: its result is discarded, the holder's run is untouched."""
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)) as worker:
        job, _ = await repo.create(nj(input={"shielded_gate": "late"}))
        await probe.started[job.id].wait()
        await steal(db_url, job.id)
        probe.gates["late"].set()  # it returns {"late": true} now, for a job no longer its own
        stats = worker.status.profiles[PROFILE]
        await until(lambda: stats.discarded == 1, what="the late result to be discarded")
        assert stats.completed == 0
    stolen = await repo.get(job.id)
    assert (stolen.status, stolen.worker_id, stolen.result) == ("running", "thief", None)


async def test_an_expired_lease_of_a_dead_worker_is_reaped_and_rerun(
    repo: JobRepository, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ai_service.reaper")
    job, _ = await repo.create(nj())
    [claimed] = await repo.claim(PROFILE, "dead-worker", limit=1, lease_seconds=1)
    assert claimed.id == job.id
    probe = Probe()
    async with running_worker(db_url, registry_for(probe), worker_lease_timeout=2.0):
        done = await until(lambda: finished(repo, job.id), what="the reaped job to rerun")
    assert (done.status, done.attempts) == ("completed", 2)
    assert done.worker_id != "dead-worker"
    # the line names the profile, whose leases they were and the jobs
    assert f"reaped 1 expired leases of {PROFILE} held by worker dead-worker" in caplog.text
    assert str(job.id) in caplog.text


async def test_the_reaper_waits_for_the_earliest_lease_at_most_its_interval(
    repo: JobRepository, db_url: str
) -> None:
    """Between turns the reaper sleeps until the earliest running lease ends (a moment past
    it), never longer than lease/4, and not under MIN_WAIT_S for a lease already expired (the
    reaper holding the lock is on it)."""
    reaper = Reaper(repo, lease_seconds=400)  # interval 100 s
    assert await reaper.next_wait() == 100  # nothing runs
    await repo.create(nj())
    await repo.claim(PROFILE, "w", limit=1, lease_seconds=30)
    assert 28 < await reaper.next_wait() <= 30 + MIN_WAIT_S
    await repo.create(nj())
    await repo.claim(PROFILE, "w", limit=1, lease_seconds=3600)
    assert 28 < await reaper.next_wait() <= 30 + MIN_WAIT_S  # the earliest one counts
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE ai_jobs SET lease_expires_at = now() - interval '1 minute'")
    assert await reaper.next_wait() == MIN_WAIT_S
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE ai_jobs SET lease_expires_at = now() + interval '1 hour'")
    assert await reaper.next_wait() == 100


async def test_a_claims_leases_are_counted_from_its_connection_not_from_a_wait_for_one(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that waited for a pooled connection (the pool refilling after a database
    restart) counted its leases from before the wait: with a short lease the worker held its
    fresh jobs' leases for run out, stopped them as lost at once, and they sat running until
    reaped, an attempt spent. The leases begin with the claim's statement, after the wait."""
    import contextvars

    from service.db.database import Database
    from service.worker.executor import Executor

    in_claim = contextvars.ContextVar("in_claim", default=False)
    armed, waiting, go_on = anyio.Event(), anyio.Event(), anyio.Event()
    connected_at: list[float] = []
    started_since: list[float | None] = []
    claim, session, start_many = JobRepository.claim, Database.session, Executor.start_many

    async def claiming(self: JobRepository, *args: Any, **kw: Any) -> list[Job]:
        in_claim.set(True)
        return await claim(self, *args, **kw)

    @asynccontextmanager
    async def pool_waits(self: Database) -> AsyncIterator[Any]:
        if in_claim.get() and armed.is_set() and not waiting.is_set():
            waiting.set()
            await go_on.wait()  # the pool has no connection to give yet
        async with session(self) as s:
            if in_claim.get() and armed.is_set():
                connected_at.append(time.monotonic())
            yield s

    def starting(self: Executor, jobs: Any, *, since: float | None = None) -> None:
        if jobs:
            started_since.append(since)
        start_many(self, jobs, since=since)

    monkeypatch.setattr(JobRepository, "claim", claiming)
    monkeypatch.setattr(Database, "session", pool_waits)
    monkeypatch.setattr(Executor, "start_many", starting)
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)):
        armed.set()  # (the catch-up claim at start-up went through; claims are shielded)
        job, _ = await repo.create(nj())
        try:
            with anyio.fail_after(30):
                await waiting.wait()
        finally:
            go_on.set()
        await until(lambda: finished(repo, job.id), what="the job")
    [since] = started_since
    assert since is not None and since >= connected_at[0], (since, connected_at)


# --- listener -----------------------------------------------------------------------------
async def test_listener_reconnects_and_nothing_is_missed(repo: JobRepository, db_url: str) -> None:
    """A job inserted while the listener cannot reconnect sends its NOTIFY to no one: only the
    claim the worker makes once the listener is back (the catch-up) can find it, since the
    fallback poll is an hour away."""
    probe = Probe()
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    admin = psycopg.conninfo.make_conninfo(db_url, dbname="postgres")
    listeners = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE application_name = 'ai-service-listener' AND datname = %s"
    )
    async with running_worker(db_url, registry_for(probe)) as worker:
        with psycopg.connect(admin, autocommit=True) as conn:
            # No new connection to the database: the pools keep theirs, the listener's goes.
            conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            try:
                [(pid,)] = conn.execute(listeners, [dbname]).fetchall()
                conn.execute("SELECT pg_terminate_backend(%s)", [pid])
                await until(
                    lambda: worker.status.listener.state == "disconnected",
                    what="the listener to notice",
                )
                # on the open status port, what failed but not the driver's words, which
                # name the host, port, user and database
                await until(
                    lambda: (worker.status.listener.last_error or "").startswith("cannot"),
                    what="a failed reconnect",
                )
                shown = worker.status.snapshot()["listener"]["last_error"]
                assert dbname not in shown and "127.0.0.1" not in shown, shown
                job, _ = await repo.create(nj())
                assert conn.execute(listeners, [dbname]).fetchall() == []  # nobody heard it
                assert (await repo.get(job.id)).status == "pending"
            finally:
                conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        done = await until(lambda: finished(repo, job.id), what="the job after the reconnect")
        assert (done.status, done.worker_id) == ("completed", worker.worker_id)
        assert worker.status.listener.reconnects == 1
        assert worker.status.listener.state == "connected"
        second, _ = await repo.create(nj())  # and the new connection hears NOTIFY again
        await until(lambda: finished(repo, second.id), what="a job after the reconnect")


async def test_without_notify_the_worker_polls(repo: JobRepository, db_url: str) -> None:
    probe = Probe()
    async with running_worker(
        db_url, registry_for(probe), worker_notify=False, worker_poll_interval=0.05
    ) as worker:
        assert worker.status.listener.state == "disabled"
        job, _ = await repo.create(nj())
        await until(lambda: finished(repo, job.id), what="the polled job")


# --- shutdown -----------------------------------------------------------------------------
async def test_stop_lets_jobs_finish_then_releases_the_rest(
    repo: JobRepository, db_url: str
) -> None:
    probe = Probe()
    worker = Worker(settings(worker_shutdown_grace=10.0), db_url, [PROFILE], registry_for(probe))
    # A bound on the whole run: a stop that never returns fails here, not at the suite's timeout.
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await until(lambda: idle(worker), what="idle")
            finishing, _ = await repo.create(nj(input={"gate": "finish"}))
            stuck, _ = await repo.create(nj(input={"block": True}))
            await probe.started[finishing.id].wait()
            await probe.started[stuck.id].wait()
            worker.stop()
            late, _ = await repo.create(nj())  # must not be claimed any more
            probe.gates["finish"].set()
    # run() has returned
    done, released, untouched = await get_all(repo, [finishing.id, stuck.id, late.id])
    assert (done.status, done.result) == ("completed", {"echo": {"gate": "finish"}, "attempt": 1})
    assert (released.status, released.attempts, released.worker_id) == ("pending", 0, None)
    assert (untouched.status, untouched.attempts) == ("pending", 0)
    assert stuck.id in probe.cancelled
    assert worker.status.profiles[PROFILE].released == 1
    assert worker.status.state == "stopped"


# --- identity and HTTP --------------------------------------------------------------------
def test_worker_ids_are_unique_per_process_on_one_host() -> None:
    assert process_worker_id("host") != process_worker_id("host")
    assert process_worker_id("host").startswith("host/")


async def test_http_endpoints(repo: JobRepository, db_url: str) -> None:
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)) as worker:
        job, _ = await repo.create(nj())
        await until(lambda: finished(repo, job.id), what="the job")
        base = f"http://127.0.0.1:{worker.http_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["listener"] == "connected"
            for path in ("/healthz", "/readyz"):  # load balancers and `curl -I` use HEAD
                head = await client.head(path)
                assert (head.status_code, head.content) == (200, b""), path
            status = (await client.get("/worker/status")).json()
            # no OpenAPI document on the worker port: its paths are JSON 404s like any other
            schema = await client.get("/schema/openapi.json")
            assert schema.status_code == 404 and schema.json()["error"] == "not_found"
    assert status["worker_id"] == worker.worker_id
    assert status["worker_id"].startswith("test/")
    assert status["listener"]["state"] == "connected"
    assert status["listener"]["last_notification_at"] is not None
    assert status["profiles"][PROFILE]["capacity"] == 4
    assert status["profiles"][PROFILE]["claimed"] == 1
    assert status["profiles"][PROFILE]["completed"] == 1
    assert status["version"] and status["uptime_seconds"] >= 0


async def test_status_says_waiting_while_jobs_run_and_idle_once_none_do(
    repo: JobRepository, db_url: str
) -> None:
    probe = Probe()
    async with running_worker(db_url, registry_for(probe)) as worker:
        stats = worker.status.profiles[PROFILE]
        await until(lambda: stats.state == "idle", what="idle before any job")
        job, _ = await repo.create(nj(input={"gate": "g"}))
        await probe.started[job.id].wait()
        # one of four slots taken, nothing else due: waiting for work, not idle
        await until(lambda: stats.state == "waiting", what="waiting while the job runs")
        assert stats.in_flight == 1
        probe.gates["g"].set()
        await until(lambda: finished(repo, job.id), what="the job")
        await until(lambda: stats.state == "idle", what="idle once it finished")


@pytest.fixture(autouse=True)
def _quiet_uvicorn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="uvicorn")
