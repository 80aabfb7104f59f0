"""GET /api/v1/stats on a known set of jobs."""

from __future__ import annotations

import datetime as dt
import logging

import anyio
import psycopg
import pytest

from service.config import Settings
from service.db import Database
from service.jobs import JobRepository, NewJob
from service.jobs.stats import StatsRepository
from tests.helpers import wait_for
from tests.integration.api_server import running_api
from tests.integration.test_worker_runtime import until


def nj(profile: str, task: str = "llm_chat") -> NewJob:
    return NewJob(owner_service="t", task_type=task, model_profile=profile)


async def test_stats_counts_errors_queue_and_durations(repo: JobRepository, db_url: str) -> None:
    await repo.create_batch([nj("qwen") for _ in range(6)] + [nj("vox", "transcribe")] * 2)
    jobs = await repo.claim("qwen", "w", limit=4, lease_seconds=60)
    await repo.complete(jobs[0].id, "w", {"ok": 1})
    await repo.complete(jobs[1].id, "w", {"ok": 1})
    await repo.fail(jobs[2].id, "w", error_category="timeout", error_message="t", retryable=False)
    with psycopg.connect(db_url, autocommit=True) as conn:  # an old failure, outside the hour
        conn.execute(
            "UPDATE ai_jobs SET status = 'failed', error_category = 'timeout', "
            "updated_at = now() - interval '2 hours', finished_at = now() - interval '2 hours' "
            "WHERE model_profile = 'vox' AND id = (SELECT min(id::text)::uuid FROM ai_jobs "
            "WHERE model_profile = 'vox')"
        )
    async with running_api(db_url) as api:
        r = await api.client.get("/api/v1/stats")
    assert r.status_code == 200
    s = r.json()
    assert s["totals"] == {"pending": 3, "running": 1, "completed": 2, "failed": 2, "cancelled": 0}
    assert {"status": "completed", "model_profile": "qwen", "task_type": "llm_chat",
            "count": 2} in s["counts"]  # fmt: skip
    assert s["errors"] == [{"error_category": "timeout", "last_hour": 1, "total": 2}]
    pending = {p["model_profile"]: p for p in s["pending"]}
    assert pending["qwen"]["pending"] == 2 and pending["vox"]["pending"] == 1
    assert pending["qwen"]["oldest_pending_age_seconds"] >= 0
    assert s["throughput"]["completed_last_5m"] == 2
    assert s["throughput"]["completed_last_60m"] == 2
    assert s["durations"]["jobs"] == 3
    assert s["durations"]["run_seconds"]["p50"] >= 0
    assert s["durations"]["queue_wait_seconds"]["p95"] >= 0


async def test_stats_on_an_empty_table(db_url: str) -> None:
    async with running_api(db_url) as api:
        s = (await api.client.get("/api/v1/stats")).json()
    assert s["counts"] == [] and s["errors"] == [] and s["pending"] == []
    assert s["durations"] == {"jobs": 0, "queue_wait_seconds": {"p50": None, "p95": None},
                              "run_seconds": {"p50": None, "p95": None}}  # fmt: skip


def kill_connections(db_url: str) -> None:
    """Terminate every other session of the test database and wait until they are gone."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        pids = [pid for (pid,) in rows]
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
        gone = "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = ANY(%s::int[]))"
        wait_for(lambda: conn.execute(gone, [pids]).fetchone() == (True,), what="the kills")


async def test_stats_answer_503_while_the_database_is_down(db_url: str) -> None:
    # The four queries run concurrently; their failures arrive as an ExceptionGroup, which
    # once fell through the error mapping as a 500.
    async with running_api(db_url) as api:
        assert (await api.client.get("/api/v1/stats")).status_code == 200  # pooled connections
        kill_connections(db_url)  # every pooled connection is now dead
        r = await api.client.get("/api/v1/stats")
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "database_unavailable"
    assert r.headers["retry-after"] == "1"


async def test_stats_failures_other_than_the_database_stay_a_group(db: Database) -> None:
    class Broken(StatsRepository):
        QUERIES = ("stats_by_kind", "no_such_query")

    with pytest.raises(ExceptionGroup) as err:
        await Broken(db).snapshot()
    assert err.group_contains(KeyError)


async def test_a_request_while_the_database_is_down_answers_503_after_the_pool_timeout(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``DB_POOL_TIMEOUT`` bounds the wait for a connection that cannot come. It was
    psycopg_pool's 30 s, longer than most callers wait: they saw a hang, not a 503. The
    client here waits 20 s, far beyond the 0.5 s configured and far short of 30 s."""
    settings = Settings(db_pool_size=2, db_pool_timeout=0.5)
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    admin = psycopg.conninfo.make_conninfo(db_url, dbname="postgres")
    async with running_api(db_url, settings) as api:
        await api.hub.until_connected()
        connects = api.hub.connects
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [dbname],
            )
            gone = "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE datname = %s)"
            wait_for(lambda: conn.execute(gone, [dbname]).fetchone() == (True,), what="kills")
        caplog.set_level(logging.INFO, logger="ai_service.api")
        try:
            for path in ("/api/v1/jobs", "/api/v1/stats", "/readyz"):
                r = await api.client.get(path, timeout=20)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"] == "database_unavailable"
                assert dbname not in r.text and "connection" not in r.text, r.text
            assert (await api.client.head("/readyz", timeout=20)).status_code == 503
            # one line as readiness is lost, not one per probe
            assert caplog.text.count("not ready: PostgreSQL is not reachable") == 1, caplog.text
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        with anyio.fail_after(60):  # the long-poll listener is back
            await api.hub.until_connected(connects + 1)
        assert "long-poll listener connected again" in caplog.text

        async def served() -> bool:  # the pool reconnects on its own pace (up to 2 s apart)
            return (await api.client.get("/api/v1/stats", timeout=20)).status_code == 200

        await until(served, timeout=60, what="the API to answer again")
        assert (await api.client.get("/readyz")).status_code == 200
        assert "ready again" in caplog.text


async def test_queue_waits_count_from_when_a_job_was_created_at_the_earliest(
    repo: JobRepository, db_url: str
) -> None:
    """A ``run_after`` in the past (here 1970: set by an operator's UPDATE, or a restore; a
    submission's is stored as its own time) made one job's wait 56 years long in the p95;
    the wait starts when the job could first run: never before it existed."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    new, _ = await repo.create(NewJob(owner_service="t", task_type="x", model_profile="q"))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE ai_jobs SET run_after = %s WHERE id = %s", (epoch, new.id))
    (job,) = await repo.claim("q", "w", limit=1, lease_seconds=60)
    await repo.complete(job.id, "w", {"ok": 1})
    assert job.run_after == epoch and job.started_at is not None
    assert dt.timedelta(0) <= job.started_at - job.due_at < dt.timedelta(hours=1)
    async with running_api(db_url) as api:
        waits = (await api.client.get("/api/v1/stats")).json()["durations"]["queue_wait_seconds"]
    assert 0 <= waits["p95"] < 3600, waits


async def test_a_past_run_after_is_stored_as_the_submission_time(
    repo: JobRepository, db_url: str
) -> None:
    """Else it jumps the queue (the earliest run_after is claimed first) and the oldest
    pending age reads 56 years at once, firing the waiting alert for a job just submitted."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    waiting, _ = await repo.create(NewJob(owner_service="t", task_type="x", model_profile="q"))
    job, _ = await repo.create(
        NewJob(owner_service="t", task_type="x", model_profile="q", run_after=epoch)
    )
    [(batched_id, _)] = await repo.create_batch(
        [NewJob(owner_service="t", task_type="x", model_profile="q", run_after=epoch)]
    )
    for created in (job, await repo.get(batched_id)):
        assert created.run_after >= created.created_at
    (first,) = await repo.claim("q", "w", limit=1, lease_seconds=60)
    assert first.id == waiting.id  # submitted first, claimed first
    async with running_api(db_url) as api:
        stats = (await api.client.get("/api/v1/stats")).json()
    ages = [q["oldest_pending_age_seconds"] for q in stats["pending"]]
    assert ages and all(age < 3600 for age in ages), stats["pending"]


async def test_a_job_the_reaper_fails_for_good_keeps_the_wait_of_its_last_attempt(
    repo: JobRepository, db_url: str
) -> None:
    """The reaper set ``run_after = now()`` on a job it failed for good too, so its final
    attempt's wait (``started_at`` - due time) came out minus a lease in the stats."""
    job, _ = await repo.create(NewJob(owner_service="t", task_type="x", model_profile="p",
                                      max_attempts=1))  # fmt: skip
    await repo.claim("p", "w", limit=1, lease_seconds=60)
    with psycopg.connect(db_url, autocommit=True) as conn:  # due 95 s ago, claimed after 5 s
        conn.execute(
            "UPDATE ai_jobs SET created_at = now() - interval '95 seconds', "
            "run_after = now() - interval '95 seconds', started_at = now() - interval '90 s', "
            "lease_expires_at = now() - interval '30 seconds' WHERE id = %s",
            (job.id,),
        )
    reaped = await repo.reap()
    assert reaped is not None and [r.status for r in reaped] == ["failed"]
    recent = (await StatsRepository(repo.db).snapshot())["stats_recent"][0]
    assert recent["wait_p50"] == pytest.approx(5.0, abs=1.0), recent


async def test_an_old_failure_is_not_an_error_of_the_last_hour_when_its_retry_runs(
    repo: JobRepository, db_url: str
) -> None:
    """The errors of the last hour went by ``updated_at``, which claims and heartbeats move:
    a job that failed hours ago counted again while its retry ran and renewed its lease."""
    job, _ = await repo.create(NewJob(owner_service="t", task_type="x", model_profile="p"))
    await repo.claim("p", "w", limit=1, lease_seconds=60)
    await repo.fail(job.id, "w", error_category="timeout", error_message="t", retryable=True)
    errors = (await StatsRepository(repo.db).snapshot())["stats_errors"]
    assert [(e["error_category"], e["last_hour"], e["total"]) for e in errors] == [
        ("timeout", 1, 1)  # just now
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:  # ... that was three hours ago
        conn.execute(
            "UPDATE ai_jobs SET failed_at = now() - interval '3 hours', "
            "updated_at = now() - interval '3 hours', run_after = now() WHERE id = %s",
            (job.id,),
        )
    [claimed] = await repo.claim("p", "w2", limit=1, lease_seconds=60)  # retried, running
    await repo.heartbeat("w2", [claimed.id], lease_seconds=60, default_seconds=None)
    errors = (await StatsRepository(repo.db).snapshot())["stats_errors"]
    assert [(e["error_category"], e["last_hour"], e["total"]) for e in errors] == [
        ("timeout", 0, 1)
    ]
    await repo.complete(claimed.id, "w2", {"ok": True})  # the error goes with its success
    assert (await StatsRepository(repo.db).snapshot())["stats_errors"] == []
