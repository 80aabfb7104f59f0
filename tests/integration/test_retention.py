"""JOB_RETENTION: the reaper deletes jobs that finished longer ago than the retention, only
finished ones, a bounded number of batches a turn."""

from __future__ import annotations

from uuid import UUID

import psycopg
import pytest

from service.config import ConfigError, Settings
from service.jobs import JobFilter, JobRepository, NewJob, reaper
from service.jobs.reaper import Reaper


async def new(repo: JobRepository, ref: str) -> UUID:
    job, _ = await repo.create(
        NewJob(owner_service="t", owner_ref=ref, task_type="x", model_profile="p")
    )
    return job.id


def age(db_url: str, ids: list[UUID], hours: float) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_jobs SET finished_at = finished_at - make_interval(secs => %s) "
            "WHERE id = ANY(%s)",
            (hours * 3600, ids),
        )


def remaining(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute("SELECT owner_ref FROM ai_jobs").fetchall()}


async def finished_long_ago(repo: JobRepository, db_url: str, n: int) -> None:
    """``n`` jobs completed two hours ago."""
    ids = [await new(repo, f"j{i}") for i in range(n)]
    await repo.claim("p", "w", limit=n, lease_seconds=60)
    for i in ids:
        await repo.complete(i, "w", {"ok": 1})
    age(db_url, ids, 2)


async def test_only_jobs_finished_before_the_retention_are_deleted(
    repo: JobRepository, db_url: str
) -> None:
    refs = ["old-completed", "old-failed", "old-cancelled", "new-completed", "pending", "running"]
    ids = {ref: await new(repo, ref) for ref in refs}
    claimed = await repo.claim("p", "w", limit=5, lease_seconds=60)  # all but one, oldest first
    assert len(claimed) == 5
    await repo.complete(ids["old-completed"], "w", {"ok": 1})
    await repo.complete(ids["new-completed"], "w", {"ok": 1})
    await repo.fail(
        ids["old-failed"], "w", error_category="invalid_input", error_message="x", retryable=False
    )
    await repo.cancel_where(JobFilter(ids=[ids["old-cancelled"]]))
    await repo.release("w", [ids["pending"]])
    age(db_url, [ids["old-completed"], ids["old-failed"], ids["old-cancelled"]], 2)
    age(db_url, [ids["new-completed"]], 0.5)

    purger = Reaper(repo, lease_seconds=60, retention=3600)
    assert await purger.purge_once() == 3
    assert remaining(db_url) == {"new-completed", "pending", "running"}
    assert await purger.purge_once() == 0


async def test_a_turn_deletes_at_most_its_batches(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reaper, "BATCH", 2)
    monkeypatch.setattr(reaper, "PURGE_BATCHES", 2)
    await finished_long_ago(repo, db_url, 5)
    purger = Reaper(repo, lease_seconds=60, retention=3600)
    assert [await purger.purge_once() for _ in range(3)] == [4, 1, 0]
    assert remaining(db_url) == set()


async def test_the_purge_keeps_its_own_pace_however_often_the_reaper_turns(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reaper turns come as leases end (external workers' leases of seconds, a job given
    up): the purge, up to 50,000 deletions, comes every lease/4 all the same."""
    monkeypatch.setattr(reaper, "BATCH", 2)
    monkeypatch.setattr(reaper, "PURGE_BATCHES", 1)
    await finished_long_ago(repo, db_url, 4)
    purger = Reaper(repo, lease_seconds=3600, retention=3600)  # a purge every 15 minutes
    await purger.turn()
    await purger.turn()  # the next turn at once: no purge in it
    assert len(remaining(db_url)) == 2
    purger._next_purge = 0.0  # (15 minutes later)
    await purger.turn()
    assert remaining(db_url) == set()


def test_retention_is_zero_or_at_least_an_hour() -> None:
    assert Settings.from_env({}).job_retention == 0
    assert Settings.from_env({"JOB_RETENTION": "720h"}).job_retention == 720 * 3600
    for bad in ("30m", "-1h", "soon"):
        with pytest.raises(ConfigError, match="JOB_RETENTION"):
            Settings.from_env({"JOB_RETENTION": bad})
