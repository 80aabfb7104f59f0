"""The wake-up triggers, observed on a real LISTEN connection."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from service.db import open_database
from service.jobs import JobFilter, JobRepository, NewJob
from tests.helpers import wait_for


def nj(profile: str, **kw: Any) -> NewJob:
    return NewJob(owner_service="t", task_type="llm_chat", model_profile=profile, **kw)


def drain(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Everything delivered so far: a round trip makes the server flush pending notifies."""
    conn.execute("SELECT 1")
    return [(n.channel, n.payload) for n in conn.notifies(timeout=0.5)]


def listener(url: str, *channels: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    for ch in channels:
        conn.execute(f'LISTEN "{ch}"'.encode())
    return conn


@asynccontextmanager
async def counting_calls(db_url: str) -> AsyncIterator[JobRepository]:
    """A repository on a connection that counts PL/pgSQL calls (``track_functions = pl``).

    Counting trigger runs is what tells a statement-level trigger from a row-level one:
    PostgreSQL folds identical notifications of one transaction, so the notifications look
    the same either way. The counts are published when the block ends (a backend publishes
    its counts as it exits); read them with ``calls``."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not (row and row[0]):
            pytest.skip("track_functions is a superuser setting; the test server's user is not")
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET track_functions = 'pl'").format(
                sql.Identifier(conn.info.dbname)
            )
        )
    database = await open_database(db_url, max_size=1)  # its connection opens after the ALTER
    try:
        yield JobRepository(database, backoff_base=0.0, backoff_max=0.0)
    finally:
        await database.close()


def calls(url: str, function: str, *, above: int = 0) -> int:
    """How often ``function`` ran per the statistics, once they show more than ``above`` runs
    (a backend publishes its counts as it exits, asynchronously: this waits on an outcome)."""

    def count() -> int | None:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT calls FROM pg_stat_user_functions WHERE funcname = %s", (function,)
            ).fetchone()
        return int(row[0]) if row is not None and row[0] > above else None

    return wait_for(count, what=f"the statistics of {function} to show more than {above} runs")


async def test_batch_insert_sends_one_notify_per_profile(db_url: str) -> None:
    with listener(db_url, "ai_jobs:qwen2.5-14b", "ai_jobs:voxtral-small", "ai_jobs:other") as conn:
        jobs = [nj("qwen2.5-14b") for _ in range(700)] + [nj("voxtral-small") for _ in range(300)]
        async with counting_calls(db_url) as repo:
            await repo.create_batch(jobs)
        got = Counter(ch for ch, _ in drain(conn))
    assert got == Counter({"ai_jobs:qwen2.5-14b": 1, "ai_jobs:voxtral-small": 1})
    # One trigger run for the 1,000 rows: a FOR EACH ROW trigger would run 1,000 times and
    # send the same two notifications (folded), so only the count tells them apart.
    assert calls(db_url, "ai_jobs_notify_inserted") == 1


async def test_requeue_notifies_but_claim_and_complete_do_not(db_url: str) -> None:
    with listener(db_url, "ai_jobs:qwen2.5-14b") as conn:
        async with counting_calls(db_url) as repo:
            await repo.create_batch([nj("qwen2.5-14b") for _ in range(50)])
            assert drain(conn) == [("ai_jobs:qwen2.5-14b", "")]
            claimed = await repo.claim("qwen2.5-14b", "w", limit=50, lease_seconds=60)
            assert len(claimed) == 50
            await repo.complete(claimed[0].id, "w", {"ok": 1})
            await repo.heartbeat("w", [claimed[1].id], lease_seconds=60, default_seconds=None)
            assert drain(conn) == []
            await repo.fail(
                claimed[1].id, "w", error_category="timeout", error_message="t", retryable=True
            )
            assert drain(conn) == [("ai_jobs:qwen2.5-14b", "")]
        assert calls(db_url, "ai_jobs_notify_requeued") == 1
        # Many jobs back to pending in one statement fold into one notification. The trigger
        # is row-level (migration 0001): it runs once per job; PostgreSQL folds what it sends.
        rest = [j.id for j in claimed[2:]]
        async with counting_calls(db_url) as repo:
            assert await repo.release("w", rest) == set(rest)
        assert drain(conn) == [("ai_jobs:qwen2.5-14b", "")]
    assert calls(db_url, "ai_jobs_notify_requeued", above=1) == 1 + len(rest)


async def test_finish_and_cancel_channels(repo: JobRepository, db_url: str) -> None:
    a, _ = await repo.create(nj("p"))
    b, _ = await repo.create(nj("p"))
    with listener(db_url, "ai_jobs_finished", "ai_jobs_cancelled") as conn:
        await repo.claim("p", "w", limit=1, lease_seconds=60)  # takes a (older id first)
        await repo.cancel_where(JobFilter(ids=[a.id, b.id]))
        got = sorted(drain(conn))
    assert got == sorted(
        [("ai_jobs_finished", str(a.id)), ("ai_jobs_finished", str(b.id)),
         ("ai_jobs_cancelled", str(a.id))]
    )  # fmt: skip


async def test_claim_uses_the_partial_index(repo: JobRepository, db_url: str) -> None:
    await repo.create_batch([nj("qwen2.5-14b") for _ in range(5000)])
    jobs = await repo.list_jobs(JobFilter(), limit=4000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_jobs SET status = 'completed', finished_at = now() WHERE id = ANY(%s)",
            ([j.id for j in jobs[0]],),
        )
        conn.execute("ANALYZE ai_jobs")
        from service.db.queries import queries

        plan = conn.execute(
            b"EXPLAIN (FORMAT TEXT) " + queries()["claim_jobs"],
            {
                "model_profile": "qwen2.5-14b",
                "worker_id": "w",
                "limit": 4,
                "lease_seconds": 60,
            },
        ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "ai_jobs_claim_idx" in text, text
    assert "Seq Scan" not in text, text


async def test_listen_connection_receives_and_reports_loss(db_url: str) -> None:
    from service.db import DatabaseUnavailable
    from service.db.listen import ListenConnection

    conn = await ListenConnection.connect(db_url, ["ai_jobs:qwen2.5-14b"])
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_notify('ai_jobs:qwen2.5-14b', 'x')")
        got = None
        async for n in conn.notifications(timeout=30):
            got = n
            break
        assert got == ("ai_jobs:qwen2.5-14b", "x")
        other.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'ai-service-listener' AND datname = current_database()"
        )
    with pytest.raises(DatabaseUnavailable):
        async for _ in conn.notifications(timeout=30):
            pass
    await conn.close()


async def test_a_listen_connection_takes_many_channels_in_few_round_trips(db_url: str) -> None:
    """The API's hub may need thousands of channels at once: they go in batches (several
    round trips here: 1,200 over BATCH 500), every one is listened to, and all go again."""
    from service.db.listen import BATCH, ListenConnection

    channels = [f"ai_jobs:many-{i}" for i in range(2 * BATCH + 200)]
    conn = await ListenConnection.connect(db_url, channels)
    try:
        count = "SELECT count(*) FROM pg_listening_channels()"
        assert (await (await conn._conn.execute(count)).fetchone()) == (len(channels),)
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("SELECT pg_notify(%s, 'x')", [channels[-1]])
        async for n in conn.notifications(timeout=60):
            assert (n.channel, n.payload) == (channels[-1], "x")
            break
        await conn.unlisten(*channels)
        assert (await (await conn._conn.execute(count)).fetchone()) == (0,)
        assert conn.channels == set()
    finally:
        await conn.close()


async def test_a_full_notify_queue_is_a_passing_outage_not_a_refused_value() -> None:
    """A session that LISTENs and then sits in a long transaction keeps the server's NOTIFY
    queue from being trimmed; once full, every insert (and completion) fails until it lets
    go. That error is of class 54, taken for a value PostgreSQL refuses: a valid job was
    answered 422 and a result taken for one that cannot be stored; it is an outage (503,
    retried). A server of its own, with a small queue (PostgreSQL 17+ sets its size)."""
    import tempfile
    from pathlib import Path

    from service.db import DatabaseUnavailable
    from service.db.embedded import FAST_SETTINGS, EmbeddedPostgres
    from service.db.migrate import migrate

    small = {**FAST_SETTINGS, "max_notify_queue_pages": "64"}
    with tempfile.TemporaryDirectory(prefix="aisvc-nq-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg", settings=small)
        url = server.start()
        try:
            migrate(url)
            holder = listener(url, "x")
            holder.execute("BEGIN")
            holder.execute("SELECT 1")  # idle in a transaction: the queue cannot be trimmed
            with psycopg.connect(url, autocommit=True) as filler:
                full = None
                for _ in range(10_000):
                    try:
                        filler.execute("SELECT pg_notify('x', repeat('a', 7900))")
                    except psycopg.errors.ProgramLimitExceeded as exc:
                        full = exc
                        break
                assert full is not None, "the queue should have filled"
            db = await open_database(url, max_size=1)
            try:
                repo = JobRepository(db)
                with pytest.raises(DatabaseUnavailable, match="NOTIFY queue"):
                    await repo.create(nj("p"))
                holder.close()  # (it lets go: the queue drains as listeners read on)
            finally:
                await db.close()
        finally:
            server.close()
