"""The worker under faults that are not a plain outage: a read-only database (a failover's
standby), results PostgreSQL refuses, database errors of unknown kind, handlers raising what is
not an ``Exception``. Each must neither crash the worker nor lose, fail or strand a job that a
later attempt of the same write would have stored. Real PostgreSQL, in-process workers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

import anyio
import httpx
import msgspec
import psycopg
import pytest

from service.db import DatabaseUnavailable, ValueRefused
from service.db.database import _translate_errors
from service.handlers.base import HandlerRegistry
from service.jobs import Job, JobFilter, JobRepository
from service.providers.errors import error_for_status
from service.providers.scrub import Scrubber
from service.worker import claimer
from service.worker.breaker import ProviderBreaker
from service.worker.main import Worker
from tests.integration.test_worker_runtime import (
    PROFILE,
    finished,
    get_all,
    nj,
    running_worker,
    until,
)


def registry(handler: Any) -> HandlerRegistry:
    r = HandlerRegistry()
    r.register(["llm_chat"], PROFILE, handler)
    return r


async def test_database_errors_are_told_apart_by_whether_a_retry_can_succeed() -> None:
    """The worker retries ``DatabaseUnavailable`` and nothing else."""
    passing = [
        psycopg.errors.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
    ]
    permanent = [
        psycopg.errors.ProgramLimitExceeded("string too long to represent as jsonb string"),
        psycopg.errors.UntranslatableCharacter("unsupported Unicode escape sequence"),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    ]
    for exc, expected in [
        *((e, DatabaseUnavailable) for e in passing),
        *((e, ValueRefused) for e in permanent),
    ]:
        with pytest.raises(expected):
            async with _translate_errors():
                raise exc


async def test_a_read_only_database_neither_crashes_the_worker_nor_loses_results(
    repo: JobRepository, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A switchover where writes reach a standby (SQLSTATE 25006): the results wait in the
    worker and are stored once the database takes writes again."""
    caplog.set_level(logging.WARNING, logger="ai_service")
    gate = anyio.Event()

    async def handler(job: Job) -> Any:
        await gate.wait()
        return {"n": job.input["n"]}

    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    async with running_worker(db_url, registry(handler)) as worker:
        ids = [i for i, _ in await repo.create_batch([nj(input={"n": n}) for n in range(3)])]
        await until(lambda: worker.status.profiles[PROFILE].in_flight == 3, what="3 running")
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
            conn.execute(  # the pool's connections reconnect, read-only
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        gate.set()
        await until(lambda: worker.status.pending_completions == 3, what="results queued")
        # Queued is not refused: wait until the database has refused a write of them.
        await until(lambda: refused_writes(caplog), what="the completer's write to be refused")
        assert worker.status.pending_completions == 3  # refused, and kept
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = off')
            conn.execute(  # their read-only sessions end: the new ones take writes
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await until(lambda: worker.status.pending_completions == 0, what="results settled")
        assert worker.status.state == "running"
    # Settled means stored or dropped; each result must have been stored.
    stored = await until(lambda: all_or_none(repo, ids), what="the jobs, read back")
    assert [(j.status, j.attempts, j.result) for j in stored] == [
        ("completed", 1, {"n": n}) for n in range(3)
    ]


def refused_writes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the completer logged of its writes refused by a read-only database."""
    return [
        msg
        for r in caplog.records
        if r.name == "ai_service.worker.completer" and "read-only" in (msg := r.getMessage())
    ]


async def all_or_none(repo: JobRepository, ids: list[UUID]) -> list[Job] | None:
    """``get_all``, riding out the test pool's own terminated connections."""
    try:
        return await get_all(repo, ids)
    except DatabaseUnavailable:
        return None


async def test_a_result_too_large_for_jsonb_fails_only_its_own_job(
    repo: JobRepository, db_url: str
) -> None:
    """Class 54 (program_limit_exceeded) is permanent: retried as an outage, it held every
    result of the worker behind it while their leases were renewed, forever."""

    async def handler(job: Job) -> Any:
        return {"t": "a" * (2**28)} if job.input.get("huge") else {"ok": True}

    async with running_worker(db_url, registry(handler)):
        huge, _ = await repo.create(nj(input={"huge": True}, max_attempts=1))
        ok, _ = await repo.create(nj())
        for i in (huge.id, ok.id):
            await until(lambda i=i: finished(repo, i), what=f"job {i}", timeout=120)
    failed, done = await get_all(repo, [huge.id, ok.id])
    assert (failed.status, failed.error_category) == ("failed", "invalid_output")
    assert "jsonb" in (failed.error_message or "")
    assert (done.status, done.result) == ("completed", {"ok": True})


async def test_a_result_refused_for_an_unknown_reason_is_retried_not_failed(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error not known to be permanent must not turn a good result into a failure; the
    other results are stored meanwhile."""
    refusals: list[UUID] = []
    real = JobRepository.complete_many

    async def complete_many(
        self: JobRepository, worker_id: str, items: Any, started: Any = None
    ) -> set[UUID]:
        if any(r == {"odd": True} for _, r in _decoded(items)) and len(refusals) < 3:
            refusals.append(items[0][0])
            raise psycopg.errors.InternalError_("could not read block 0: unexpected error")
        return await real(self, worker_id, items, started)

    monkeypatch.setattr(JobRepository, "complete_many", complete_many)

    async def handler(job: Job) -> Any:
        return dict(job.input)

    async with running_worker(db_url, registry(handler)):
        odd, _ = await repo.create(nj(input={"odd": True}, max_attempts=1))
        other, _ = await repo.create(nj(input={"other": True}))
        for i in (odd.id, other.id):
            await until(lambda i=i: finished(repo, i), what=f"job {i}")
    stored = await get_all(repo, [odd.id, other.id])
    assert [(j.status, j.result) for j in stored] == [
        ("completed", {"odd": True}),
        ("completed", {"other": True}),
    ]
    assert len(refusals) == 3


async def test_a_result_stored_by_a_try_whose_answer_was_lost_is_not_called_discarded(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT went through, its answer did not (the database restarted): the retry
    matches no running job. The result is stored, so it counts as completed — it was logged
    as "discarded: this worker no longer holds it", and the completion metric missed it."""
    lost: list[UUID] = []
    real = JobRepository.complete_many

    async def complete_many(
        self: JobRepository, worker_id: str, items: Any, started: Any = None
    ) -> set[UUID]:
        held = await real(self, worker_id, items, started)
        if not lost:
            lost.extend(held)
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        return held

    monkeypatch.setattr(JobRepository, "complete_many", complete_many)

    async def handler(job: Job) -> Any:
        return {"ok": True}

    async with running_worker(db_url, registry(handler)) as worker:
        job, _ = await repo.create(nj())
        stats = worker.status.profiles[PROFILE]
        await until(lambda: stats.completed + stats.discarded == 1, what="the result settled")
        assert (stats.completed, stats.discarded) == (1, 0)
    assert lost == [job.id]
    assert (await repo.get(job.id)).status == "completed"


async def test_a_failure_recorded_by_a_try_whose_answer_was_lost_is_counted_as_such(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a failure, final or retried: the retry was refused (the job is no longer
    running), and the failure was logged as "not recorded" and counted discarded, its
    ``failed``/``retried`` count and metric missed. A run really lost meanwhile still is."""
    from service.handlers.base import ProviderRejected, ProviderUnavailable

    lost: list[UUID] = []
    cancelled_first: list[UUID | None] = [None]
    real = JobRepository.fail

    async def fail(self: JobRepository, job_id: UUID, *args: Any, **kwargs: Any) -> Job:
        if job_id == cancelled_first[0]:  # cancelled as the write is lost: not recorded
            await self.cancel_where(JobFilter(ids=[job_id]))
            cancelled_first[0] = None
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        done = await real(self, job_id, *args, **kwargs)
        if job_id not in lost:
            lost.append(job_id)
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        return done

    monkeypatch.setattr(JobRepository, "fail", fail)

    async def handler(job: Job) -> Any:
        if job.input.get("kind") == "gone":
            cancelled_first[0] = job.id
        if job.input.get("kind") in ("final", "gone"):
            raise ProviderRejected("the request was refused (400)")
        raise ProviderUnavailable("the server answered 503")

    # (a backoff as in production: the retried job is not claimed again meanwhile)
    backoff = {"retry_backoff_base": 3600.0, "retry_backoff_max": 3600.0}
    async with running_worker(db_url, registry(handler), **backoff) as worker:
        stats = worker.status.profiles[PROFILE]
        final, _ = await repo.create(nj(input={"kind": "final"}))
        await until(lambda: stats.failed + stats.discarded == 1, what="the failure settled")
        assert (stats.failed, stats.discarded) == (1, 0)
        retried, _ = await repo.create(nj(input={"kind": "again"}, max_attempts=2))
        await until(lambda: stats.retried + stats.discarded == 1, what="the retry settled")
        assert (stats.retried, stats.discarded) == (1, 0)
        gone, _ = await repo.create(nj(input={"kind": "gone"}))
        await until(lambda: stats.discarded == 1, what="the lost run settled")
        assert (stats.failed, stats.retried) == (1, 1)
    assert lost == [final.id, retried.id]
    assert (await repo.get(final.id)).error_category == "provider_rejected"
    assert (await repo.get(retried.id)).status == "pending"
    assert (await repo.get(gone.id)).status == "cancelled"


def _decoded(items: Any) -> list[tuple[UUID, Any]]:
    return [
        (i, msgspec.json.decode(bytes(r)) if isinstance(r, msgspec.Raw) else r) for i, r in items
    ]


async def test_a_handler_raising_what_is_not_an_exception_fails_the_attempt(
    repo: JobRepository, db_url: str
) -> None:
    """A stray ``CancelledError`` (from a task of the handler's own) ended the job's task and
    left the job ``running`` for its whole lease; ``SystemExit`` killed the worker."""
    calls: list[int] = []

    async def handler(job: Job) -> Any:
        calls.append(job.attempts)
        if job.attempts == 1:
            inner = asyncio.get_running_loop().create_task(anyio.sleep_forever())
            inner.cancel()
            await inner  # raises CancelledError here, though nobody cancelled this task
        if job.attempts == 2:
            raise SystemExit(3)
        return {"attempt": job.attempts}

    async with running_worker(db_url, registry(handler)) as worker:  # leases: an hour
        job, _ = await repo.create(nj(max_attempts=3))
        done = await until(lambda: finished(repo, job.id), what="the third attempt")
        assert worker.status.state == "running"
    assert (done.status, done.attempts, done.result, calls) == (
        "completed",
        3,
        {"attempt": 3},
        [1, 2, 3],
    )


async def test_a_failure_whose_message_is_refused_is_recorded_without_it(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the database refuses in a message (not a NUL or a surrogate: those are
    replaced), the failure is still recorded instead of the job waiting out its lease."""
    real = JobRepository.fail

    async def fail(self: JobRepository, job_id: UUID, worker_id: str, **kw: Any) -> Job:
        if "refuse me" in kw["error_message"]:
            raise ValueRefused("value too long for type character varying(4000)")
        return await real(self, job_id, worker_id, **kw)

    monkeypatch.setattr(JobRepository, "fail", fail)

    async def handler(job: Job) -> Any:
        raise RuntimeError("refuse me")

    async with running_worker(db_url, registry(handler)):  # leases: an hour
        job, _ = await repo.create(nj(max_attempts=1))
        done = await until(lambda: finished(repo, job.id), what="the failure")
    assert (done.status, done.error_category) == ("failed", "internal")
    assert done.error_message == "internal (its message could not be stored: ValueRefused)"


async def test_a_job_whose_failure_cannot_be_written_is_handed_on_not_held(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses the failure for a reason of unknown kind, with the message and
    without it: the worker gives the job up to the reaper at once (attempt counted), instead
    of leaving it ``running`` and unrenewed for a whole lease (an hour here)."""
    real = JobRepository.fail
    refused: list[int] = []

    async def fail(self: JobRepository, job_id: UUID, worker_id: str, **kw: Any) -> Job:
        if "first attempt" in kw["error_message"] or "could not be stored" in kw["error_message"]:
            refused.append(1)
            raise RuntimeError("an error of unknown kind")
        return await real(self, job_id, worker_id, **kw)

    monkeypatch.setattr(JobRepository, "fail", fail)

    async def handler(job: Job) -> Any:
        if job.attempts == 1:
            raise RuntimeError("first attempt")
        return {"attempt": job.attempts}

    async with running_worker(db_url, registry(handler)):  # leases: an hour
        job, _ = await repo.create(nj(max_attempts=3))
        done = await until(lambda: finished(repo, job.id), what="the second attempt")
    assert (done.status, done.attempts, done.result) == ("completed", 2, {"attempt": 2})
    assert len(refused) == 2  # with its message, then without


async def test_an_unknown_error_reading_the_next_due_time_does_not_stop_the_worker(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle worker's "when is the next job due" query raising an error of unknown kind
    ended the claim loop, and with it the worker and every job in flight."""
    real = JobRepository.seconds_until_due
    raised: list[int] = []

    async def seconds_until_due(self: JobRepository, *a: Any, **kw: Any) -> float | None:
        if not raised:
            raised.append(1)
            raise psycopg.errors.InsufficientPrivilege("permission denied for table ai_jobs")
        return await real(self, *a, **kw)

    monkeypatch.setattr(JobRepository, "seconds_until_due", seconds_until_due)

    async def handler(job: Job) -> Any:
        return {"ok": True}

    async with running_worker(db_url, registry(handler)) as worker:
        await until(lambda: raised, what="the idle worker to ask when jobs are due")
        job, _ = await repo.create(nj())
        done = await until(lambda: finished(repo, job.id), what="the job")
        assert worker.status.state == "running"
    assert done.status == "completed"


async def test_a_handler_whose_lease_runs_out_unrenewed_stops_before_another_worker_runs_it(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker A is cut off from PostgreSQL for its renewals (the others reach it; A's renewal
    hangs): its lease runs out, B's reaper hands the job to B. A's handler must have stopped
    by then, by its own clock: the job never runs twice at once (A kept running it before)."""
    real = JobRepository.heartbeat
    cut_off: set[str] = set()

    async def heartbeat(self: JobRepository, worker_id: str, *a: Any, **kw: Any) -> Any:
        if worker_id in cut_off:  # a cut network: no answer, not even an error, for ~30 s
            await anyio.sleep_forever()
        return await real(self, worker_id, *a, **kw)

    monkeypatch.setattr(JobRepository, "heartbeat", heartbeat)
    active, peak, stopped = [0], [0], []

    async def handler(job: Job) -> Any:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            if job.attempts == 1:
                await anyio.sleep_forever()
            return {"attempt": job.attempts}
        except anyio.get_cancelled_exc_class():
            stopped.append(job.attempts)
            raise
        finally:
            active[0] -= 1

    # A: one job at a time, so it cannot take the job again itself while it runs it
    async with running_worker(
        db_url, registry(handler), worker_lease_timeout=3.0, worker_claim_limit=1
    ) as a:
        cut_off.add(a.worker_id)
        # cut off, its listener hears nothing either: not that B's reap took the job back
        monkeypatch.setattr(a.running, "cancel", lambda *args, **kw: False)
        job, _ = await repo.create(nj(max_attempts=3))
        await until(lambda: active[0] == 1, what="A to run the job")
        async with running_worker(db_url, registry(handler), worker_lease_timeout=3.0):
            done = await until(lambda: finished(repo, job.id), what="the job to finish")
    assert (done.status, done.attempts, done.result) == ("completed", 2, {"attempt": 2})
    assert stopped == [1] and peak[0] == 1


async def test_a_nul_or_a_surrogate_in_an_error_message_still_records_the_failure(
    repo: JobRepository, db_url: str
) -> None:
    """A provider's body quoted into the message may hold a NUL, which PostgreSQL text cannot,
    or a library's message a lone surrogate, which psycopg cannot encode."""

    async def handler(job: Job) -> Any:  # (neither can travel in jsonb: made from a name)
        said = {"nul": "\x00", "surrogate": "\udcff"}[job.input["say"]]
        raise RuntimeError(f"provider said {said} nothing")

    async with running_worker(db_url, registry(handler)):  # leases: an hour
        nul, _ = await repo.create(nj(max_attempts=1, input={"say": "nul"}))
        lone, _ = await repo.create(nj(max_attempts=1, input={"say": "surrogate"}))
        done = await until(lambda: finished(repo, nul.id), what="the failure")
        other = await until(lambda: finished(repo, lone.id), what="the other failure")
    assert (done.status, done.error_category) == ("failed", "internal")
    assert "provider said \ufffd nothing" in (done.error_message or "")
    assert (other.status, other.error_category) == ("failed", "internal")
    assert "provider said ? nothing" in (other.error_message or "")


async def stop_with_a_result_queued(repo: JobRepository, db_url: str) -> tuple[Job, Worker]:
    """A job runs, its result waits in the completer (whose writes the test makes fail),
    and the worker is stopped; returns the job and the stopped worker."""

    async def handler(job: Job) -> Any:
        return {"ok": True}

    async with running_worker(db_url, registry(handler)) as worker:
        job, _ = await repo.create(nj())
        await until(lambda: worker.status.pending_completions == 1, what="the result queued")
        worker.stop()
        await until(lambda: worker.status.state == "stopped", what="the worker to stop")
    return job, worker


async def test_stopping_releases_a_job_whose_result_cannot_be_stored(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The results are flushed within half the final-writes time; a job whose result is still
    refused is handed back to pending (attempt not counted), not left to its lease."""
    monkeypatch.setattr("service.worker.shutdown.FINAL_WRITES_TIMEOUT", 6.0)  # half for release

    async def complete_many(
        self: JobRepository, worker_id: str, items: Any, started: Any = None
    ) -> set[UUID]:
        raise psycopg.errors.InternalError_("could not read block 0: unexpected error")

    monkeypatch.setattr(JobRepository, "complete_many", complete_many)

    job, _ = await stop_with_a_result_queued(repo, db_url)
    released = await repo.get(job.id)
    assert (released.status, released.attempts, released.worker_id) == ("pending", 0, None)


async def test_a_result_in_hand_is_stored_if_the_database_returns_during_the_release(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while PostgreSQL is down, results queued: the results' half of the final
    writes runs out, then the database comes back while the release is being retried. The
    results are stored then; they were thrown away, their jobs released to run again."""
    monkeypatch.setattr("service.worker.shutdown.FINAL_WRITES_TIMEOUT", 2.0)
    real_complete, real_release = JobRepository.complete_many, JobRepository.release
    back: list[bool] = []

    async def complete_many(self: JobRepository, *args: Any, **kwargs: Any) -> set[UUID]:
        if not back:
            raise DatabaseUnavailable("connection refused")
        return await real_complete(self, *args, **kwargs)

    async def release(self: JobRepository, *args: Any, **kwargs: Any) -> set[UUID]:
        if not back:
            back.append(True)  # the first try at the release fails; the server is back after
            raise DatabaseUnavailable("connection refused")
        return await real_release(self, *args, **kwargs)

    monkeypatch.setattr(JobRepository, "complete_many", complete_many)
    monkeypatch.setattr(JobRepository, "release", release)

    job, worker = await stop_with_a_result_queued(repo, db_url)
    assert worker.status.profiles[PROFILE].released == 0
    done = await repo.get(job.id)
    assert (done.status, done.result, done.attempts) == ("completed", {"ok": True}, 1)


async def test_jobs_that_cannot_be_handed_back_at_exit_are_named_in_the_log(
    repo: JobRepository,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGTERM while the database is down: the release cannot get through within the
    final-writes time. The jobs then wait out their leases and run again; that used to happen
    with no line saying so (the pool's own wait used up the time before any warning)."""
    monkeypatch.setattr("service.worker.shutdown.FINAL_WRITES_TIMEOUT", 1.0)

    async def release(self: JobRepository, worker_id: str, ids: Any) -> set[UUID]:
        raise DatabaseUnavailable("connection refused")

    monkeypatch.setattr(JobRepository, "release", release)

    async def handler(job: Job) -> Any:
        await anyio.sleep_forever()

    caplog.set_level(logging.INFO)
    async with running_worker(db_url, registry(handler), worker_shutdown_grace=0.1) as worker:
        job, _ = await repo.create(nj())
        await until(lambda: worker.status.profiles[PROFILE].in_flight == 1, what="the job")
        worker.stop()
        await until(lambda: worker.status.state == "stopped", what="the worker to stop")
    # once, after the last try (the final writes run at the end of the drain and at exit)
    assert caplog.text.count("could not hand back 1 jobs before exiting") == 1
    assert str(job.id) in caplog.text and "WORKER_LEASE_TIMEOUT" in caplog.text
    assert (await repo.get(job.id)).status == "running"  # until its lease expires


async def test_the_final_writes_at_exit_get_what_is_left_of_their_time_not_all_of_it_again(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They run at the end of the drain and again at exit; on a database that stopped
    answering the second run waited the whole ``FINAL_WRITES_TIMEOUT`` again (10 s), which
    took a worker past Kubernetes' 60 s termination grace. Both share one bound now: the
    release that used it up is not tried again."""
    monkeypatch.setattr("service.worker.shutdown.FINAL_WRITES_TIMEOUT", 1.0)
    tries: list[int] = []

    async def release(self: JobRepository, worker_id: str, ids: Any) -> set[UUID]:
        tries.append(len(ids))
        await anyio.sleep_forever()  # a database that does not answer
        raise AssertionError("unreachable")

    monkeypatch.setattr(JobRepository, "release", release)

    async def handler(job: Job) -> Any:
        await anyio.sleep_forever()

    async with running_worker(db_url, registry(handler), worker_shutdown_grace=0.1) as worker:
        await repo.create(nj())
        await until(lambda: worker.status.profiles[PROFILE].in_flight == 1, what="the job")
        worker.stop()
        await until(lambda: worker.status.state == "stopped", what="the worker to stop")
    assert tries == [1]


async def test_a_provider_refusing_everyone_is_retried_a_bad_request_is_final(
    repo: JobRepository, db_url: str
) -> None:
    """A 401 (a wrong or rotated key) says nothing about the job: it goes back to pending and
    completes once the server accepts again. It used to fail for good, with every other job
    in flight, until someone retried them by hand. A 400 is this job's own: final."""
    request = httpx.Request("POST", "http://llm.test/v1/chat/completions")
    calls: dict[UUID, int] = {}

    async def handler(job: Job) -> Any:
        calls[job.id] = calls.get(job.id, 0) + 1
        if job.input.get("status") and calls[job.id] == 1:
            response = httpx.Response(job.input["status"], json={"detail": "no"}, request=request)
            raise error_for_status("llm", response, Scrubber()) or AssertionError("2xx")
        return {"ok": True}

    async with running_worker(db_url, registry(handler)):
        unauthorized, _ = await repo.create(nj(input={"status": 401}))
        bad_request, _ = await repo.create(nj(input={"status": 400}))
        done = await until(lambda: finished(repo, unauthorized.id), what="the 401 job")
        refused = await until(lambda: finished(repo, bad_request.id), what="the 400 job")
    assert (done.status, done.attempts) == ("completed", 2)
    assert (refused.status, refused.attempts) == ("failed", 1)
    assert refused.error_category == "provider_rejected"


async def test_a_notification_ends_the_backoff_after_a_failed_claim(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim failed (the database was down) and the loop backs off (up to 5 s; an hour
    here). A NOTIFY means the database answers again: the job it announces is claimed at
    once, not after the backoff (a job submitted as PostgreSQL came back waited it out)."""

    class LongBackoff:
        def __init__(self, *args: Any) -> None:
            pass

        def next(self) -> float:
            return 3600.0

        def reset(self) -> None:
            pass

    monkeypatch.setattr("service.worker.claimer.Backoff", LongBackoff)
    real = JobRepository.claim
    armed: list[bool] = []  # the next claim fails (once the worker idles)

    async def claim(self: JobRepository, *args: Any, **kwargs: Any) -> list[Job]:
        if armed and armed.pop():
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(JobRepository, "claim", claim)

    async def handler(job: Job) -> Any:
        return {"ok": True}

    async with running_worker(db_url, registry(handler)) as worker:
        armed.append(True)
        first, _ = await repo.create(nj())
        await until(lambda: worker.status.profiles[PROFILE].state == "backoff",
                    what="the failed claim's backoff")  # fmt: skip
        second, _ = await repo.create(nj())  # its NOTIFY: the database answers again
        done = [await until(lambda i=i: finished(repo, i), what="the jobs, within the backoff")
                for i in (first.id, second.id)]  # fmt: skip
    assert [j.status for j in done] == ["completed", "completed"]


def lose_the_first_claims_reply(monkeypatch: pytest.MonkeyPatch) -> list[UUID]:
    """The first claim that takes jobs commits, then its connection drops before the rows
    arrive; returns (fills, then) the ids it took."""
    real = JobRepository.claim
    lost: list[UUID] = []

    async def claim(self: JobRepository, *args: Any, **kwargs: Any) -> list[Job]:
        jobs = await real(self, *args, **kwargs)
        if jobs and not lost:
            lost.extend(j.id for j in jobs)
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        return jobs

    monkeypatch.setattr(JobRepository, "claim", claim)
    return lost


async def test_a_claim_whose_reply_was_lost_releases_what_it_claimed(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim committed, then the connection dropped before the rows arrived: the jobs are
    the worker's in the database but unknown to it. They used to wait out their leases (an
    hour here) and lose an attempt; now the next claim round releases them first."""
    lost = lose_the_first_claims_reply(monkeypatch)
    calls: list[int] = []

    async def handler(job: Job) -> Any:
        calls.append(job.attempts)
        return {"ok": True}

    async with running_worker(db_url, registry(handler)) as worker:
        job, _ = await repo.create(nj(max_attempts=1))
        done = await until(lambda: finished(repo, job.id), what="the job to complete")
        assert worker.status.profiles[PROFILE].released == 1
    assert lost == [job.id]
    assert (done.status, done.attempts, calls) == ("completed", 1, [1])


async def test_a_lost_claims_jobs_are_released_while_the_provider_pause_lasts(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's reply was lost and then the inference server went down: the loop pauses
    (no claim round, which is where lost claims were released), so the jobs were held
    unrenewed until reaped. They are handed back before the pause now."""
    lost = lose_the_first_claims_reply(monkeypatch)
    monkeypatch.setattr(ProviderBreaker, "pause_left", lambda self: 3600.0 if lost else 0.0)

    async def handler(job: Job) -> Any:
        return {"ok": True}

    async with running_worker(db_url, registry(handler)) as worker:
        job, _ = await repo.create(nj())
        stats = worker.status.profiles[PROFILE]
        await until(lambda: stats.released == 1, what="the lost claim's job to be handed back")
        assert stats.state == "paused"
    back = await repo.get(job.id)
    assert (back.status, back.attempts, back.worker_id) == ("pending", 0, None)


async def test_jobs_claimed_as_the_worker_stops_are_released_even_if_the_first_try_fails(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that returns after ``stop()`` hands its jobs straight back; when that release
    failed they stayed ``running`` for a whole lease. The final writes now try again. The
    release is bounded like a claim in flight at the stop (it had 10 s of its own)."""
    holder: list[Any] = []
    real_claim, real_release = JobRepository.claim, JobRepository.release
    releases: list[int] = []
    bounds: list[float] = []  # what the first release had left (a hung database: all of it)

    async def claim(self: JobRepository, *args: Any, **kwargs: Any) -> list[Job]:
        jobs = await real_claim(self, *args, **kwargs)
        if jobs:
            holder[0].stop()  # the signal arrives while the claim is in flight
        return jobs

    async def release(self: JobRepository, worker_id: str, ids: Any) -> set[UUID]:
        releases.append(len(ids))
        if len(releases) == 1:
            bounds.append(anyio.current_effective_deadline() - anyio.current_time())
            raise DatabaseUnavailable("server closed the connection unexpectedly")
        return await real_release(self, worker_id, ids)

    monkeypatch.setattr(JobRepository, "claim", claim)
    monkeypatch.setattr(JobRepository, "release", release)

    async def handler(job: Job) -> Any:
        raise AssertionError("a job claimed after stop() must not start")

    async with running_worker(db_url, registry(handler)) as worker:
        holder.append(worker)
        job, _ = await repo.create(nj())
        await until(lambda: worker.status.state == "stopped", what="the worker to stop")
    released = await repo.get(job.id)
    assert (released.status, released.attempts, released.worker_id) == ("pending", 0, None)
    assert releases == [1, 1]
    # the worker stopped: it waits for this release no longer than for a claim in flight
    assert 0 < bounds[0] <= claimer.STOP_WAIT, bounds


async def test_a_provider_message_quoting_the_prompt_stays_out_of_the_logs(
    repo: JobRepository, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 422's FastAPI detail echoes the rejected input. The job's error_message keeps it for
    its owner; the worker's log line names the status only (no payloads in logs by default)."""
    body = {"detail": [{"type": "string_type", "loc": ["body"], "input": "SECRET prompt"}]}
    request = httpx.Request("POST", "http://llm.test/v1/chat/completions")
    refusal = error_for_status("llm", httpx.Response(422, json=body, request=request), Scrubber())
    assert refusal is not None and "SECRET prompt" in str(refusal)

    async def handler(job: Job) -> Any:
        raise refusal

    caplog.set_level(logging.DEBUG)
    async with running_worker(db_url, registry(handler)):
        job, _ = await repo.create(nj())
        done = await until(lambda: finished(repo, job.id), what="the failure")
    assert (done.status, done.error_category) == ("failed", "provider_rejected")
    assert "SECRET prompt" in (done.error_message or "")
    assert "llm answered HTTP 422" in caplog.text
    assert "SECRET" not in caplog.text
