"""A rolling upgrade: a migration adds a column to ``ai_jobs`` while old processes keep
running. psycopg prepares a statement after its fifth run on a connection, and a prepared
statement whose result columns change fails ("cached plan must not change result type") on
every execution until its connection is replaced, up to an hour later: claims stopped, and a
job whose failure could not be written stayed ``running``. The statements name their columns,
and a prepared statement outliving a schema change is dropped and its query retried once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import psycopg
import pytest

from service.db import Database, DatabaseUnavailable, open_database
from service.db.queries import sql_dir
from service.jobs import Job, JobFilter, JobRepository, NewJob

PROFILE = "schema-change"
RUNS = 8  # past psycopg's prepare_threshold (5): the statements are prepared by then


@pytest.fixture
async def one_conn_db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(db_url, max_size=1, min_size=1)
    try:
        yield database
    finally:
        await database.close()


def add_column(db_url: str, name: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE ai_jobs ADD COLUMN {name} int")


def new_job(i: int) -> NewJob:
    return NewJob(
        owner_service="t", owner_ref=str(i), task_type="x", model_profile=PROFILE,
        idempotency_key=f"k{i}",
    )  # fmt: skip


async def every_job_statement(repo: JobRepository, i: int) -> None:
    """Each statement that reads a whole job row, once."""
    job, _ = await repo.create(new_job(i))
    assert (await repo.create(new_job(i)))[0].id == job.id  # the key's job, read back
    await repo.get(job.id)
    await repo.list_jobs(JobFilter(owner_service="t"), limit=5)
    [claimed] = await repo.claim(PROFILE, "w", limit=1, lease_seconds=60)
    if i % 2:
        await repo.complete(claimed.id, "w", {"ok": i})
    else:
        await repo.fail(
            claimed.id, "w", error_category="internal", error_message="boom", retryable=False
        )
        await repo.retry(claimed.id)
        [again] = await repo.claim(PROFILE, "w", limit=1, lease_seconds=60)
        await repo.complete(again.id, "w", {"ok": i})


async def test_a_column_added_meanwhile_breaks_no_prepared_statement(
    one_conn_db: Database, db_url: str
) -> None:
    repo = JobRepository(one_conn_db)
    for i in range(RUNS):
        await every_job_statement(repo, i)
    add_column(db_url, "added_by_a_newer_release")
    for i in range(RUNS, RUNS + 3):
        await every_job_statement(repo, i)  # no "cached plan must not change result type"


async def test_a_prepared_statement_outliving_a_schema_change_is_dropped(
    one_conn_db: Database, db_url: str
) -> None:
    """Any statement still prepared over ``*`` (an operator's, an extension's query) fails
    once as DatabaseUnavailable (callers retry that) and works on the next try, on the same
    pooled connection: not for the rest of its life."""
    query = b"SELECT * FROM ai_jobs LIMIT 1"
    for _ in range(RUNS):
        async with one_conn_db._connection() as conn:
            await conn.execute(query)
    add_column(db_url, "another_column")
    with pytest.raises(DatabaseUnavailable, match="schema changed"):
        async with one_conn_db._connection() as conn:
            await conn.execute(query)
    async with one_conn_db._connection() as conn:
        await conn.execute(query)


def test_the_job_column_list_is_the_job_struct() -> None:
    """``_job_columns`` (sql/queries.sql) names every field a Job is read from, no more."""
    text = (sql_dir() / "queries.sql").read_text(encoding="utf-8")
    body = re.search(r"-- name: _job_columns\n(?:--.*\n)*((?:.+\n)+)", text)
    assert body is not None
    columns = [c.strip() for c in body.group(1).split(",")]
    assert columns == list(Job.__struct_fields__)
