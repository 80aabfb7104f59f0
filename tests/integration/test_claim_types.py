"""Claims restricted by task type (``claim_jobs_of_types``, migration 0006): the same jobs in
the same order as an unrestricted claim would take of the wanted types, and a plan that reads
the head of each wanted type's queue instead of stepping over the jobs of other types queued
ahead (a down external consumer's backlog made every built-in claim of the profile slow).
The idle worker's lookup of its next due job reads the same group heads."""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest

from service.db.queries import queries
from service.jobs import JobRepository

PROFILE = "typed-claims"
QUEUE = b"""
INSERT INTO ai_jobs (id, owner_service, task_type, model_profile, priority, run_after)
SELECT gen_random_uuid(), 't', %s, %s, %s, now() - make_interval(secs => %s)
FROM generate_series(1, %s) AS g
"""


def queue(db_url: str, *batches: tuple[str, int, float, int], profile: str = PROFILE) -> None:
    """(task type, priority, seconds overdue, count) per batch."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for task_type, priority, overdue, count in batches:
            conn.execute(QUEUE, (task_type, profile, priority, overdue, count))
        conn.execute(b"ANALYZE ai_jobs")


def expected_order(db_url: str, types: list[str]) -> list[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            b"SELECT id::text FROM ai_jobs WHERE status = 'pending' AND model_profile = %s "
            b"AND task_type = ANY(%s) AND run_after <= now() ORDER BY priority DESC, run_after, id",
            (PROFILE, types),
        ).fetchall()
    return [r[0] for r in rows]


async def test_typed_claims_take_the_wanted_types_in_claim_order(
    repo: JobRepository, db_url: str
) -> None:
    queue(
        db_url,
        ("tg_analysis", 9, 500, 30),  # left to an external worker, ahead of everything
        ("llm_chat", 0, 100, 20),
        ("call_analysis", 5, 10, 10),  # higher priority, newer
        ("unknown_type", 0, 300, 5),  # no handler: the built-in worker claims it to fail it
    )
    with psycopg.connect(db_url, autocommit=True) as conn:  # not due yet: never taken
        conn.execute(QUEUE.replace(b"now() - ", b"now() + "), ("llm_chat", PROFILE, 9, 60, 3))
    builtin = expected_order(db_url, ["llm_chat", "call_analysis", "unknown_type"])
    theirs = expected_order(db_url, ["tg_analysis"])
    taken: list[str] = []
    for limit in (1, 7, 16, 100):  # one by one, then batches across the types
        jobs = await repo.claim(
            PROFILE, "w-1", limit=limit, lease_seconds=60, skip_types=["tg_analysis"]
        )
        assert len(jobs) == min(limit, len(builtin) - len(taken))
        taken += [str(j.id) for j in jobs]
    assert taken == builtin  # every job of the wanted types, each once, in the claim order
    external = await repo.claim(
        PROFILE, "x-1", limit=100, lease_seconds=60, only_types=["tg_analysis"]
    )
    assert [str(j.id) for j in external] == theirs and len(theirs) == 30
    assert await repo.claim(PROFILE, "x-1", limit=5, lease_seconds=60, only_types=["nope"]) == []


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out += _nodes(child)
    return out


@pytest.mark.parametrize(
    "backlog",
    [
        ("tg_analysis", 0, 3600, 100_000),  # a skipped type's backlog queued ahead
        ("call_analysis", 0, -3600, 100_000),  # a wanted type's jobs, none due (retry backoff)
    ],
    ids=["skipped-ahead", "wanted-not-due"],
)
def test_typed_claim_reads_group_heads_not_the_jobs_around_them(
    db_url: str, backlog: tuple[str, int, float, int]
) -> None:
    """With the one-letter profile below the planner, given the type as a plain column match,
    walked ai_jobs_claim_idx through the 10,000 jobs ahead (with "qwen2.5-14b" it happened to
    choose well); on PostgreSQL 15-17 a type matched as a range read every job of a type
    none of whose jobs was due. The generic plan (what a prepared claim runs for good) once
    hashed the whole table for the final UPDATE. Each would show here as a node reading or
    filtering thousands of rows, or an index scan reading hundreds of pages."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        # The walk below counts on each claim marking the index entries of the jobs finished
        # before it dead. An auto-ANALYZE (due after ~2,000 of the updates below, migration
        # 0003) holds a snapshot while it samples, which keeps those entries alive: the claims
        # after it step over hundreds of them, so the page count depended on its timing.
        conn.execute(b"ALTER TABLE ai_jobs SET (autovacuum_enabled = off)")
    queue(db_url, backlog, ("llm_chat", 0, 60, 5_000), profile="p")
    params = {"model_profile": "p", "worker_id": "w", "limit": 16, "lease_seconds": 60.0,
              "only_types": None, "skip_types": ["tg_analysis"]}  # fmt: skip
    claim = queries()["claim_jobs_of_types"]
    with psycopg.connect(db_url, autocommit=True, prepare_threshold=0) as conn:
        for _ in range(100):  # a worker at work: claimed and finished jobs behind the heads
            ids = [r[0] for r in conn.execute(claim, params).fetchall()]
            assert len(ids) == 16
            conn.execute(b"UPDATE ai_jobs SET status = 'completed' WHERE id = ANY(%s)", (ids,))
        with conn.transaction(force_rollback=True):
            conn.execute(b"SET LOCAL plan_cache_mode = force_generic_plan")
            sql = b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + claim
            ((doc,),) = conn.execute(sql, params).fetchall()
    plan = (doc if isinstance(doc, list) else json.loads(doc))[0]["Plan"]
    nodes = _nodes(plan)
    assert any(n.get("Index Name") == "ai_jobs_claim_type_idx" for n in nodes), nodes
    assert not any(n.get("Index Name") == "ai_jobs_claim_idx" for n in nodes), nodes
    assert not any(n["Node Type"] == "Seq Scan" for n in nodes), nodes
    assert plan["Actual Rows"] == 16
    assert max(n.get("Rows Removed by Filter", 0) for n in nodes) < 100, nodes
    # every index scan is a few probes, not a walk over the 100,000 jobs' entries (~600 pages)
    for n in nodes:
        if n["Node Type"].startswith("Index"):
            pages = n["Shared Hit Blocks"] + n["Shared Read Blocks"]
            assert pages < 100 * n["Actual Loops"], n


async def test_concurrent_typed_and_plain_claims_take_every_job_exactly_once(
    repo: JobRepository, db_url: str
) -> None:
    """Built-in claimers (leaving tg_analysis to others), external claimers (tg_analysis only)
    and an unfiltered claimer, all at once on one queue of three types and three priorities:
    every job is claimed once, by a claimer allowed to take it, and none is left pending."""
    queue(
        db_url,
        *[
            (t, p, 60 - p, 150)
            for t in ("llm_chat", "call_analysis", "tg_analysis")
            for p in (0, 5, 9)
        ],
        profile="mixed",
    )
    taken: dict[str, list[str]] = {}
    claimers = {
        "builtin-1": {"skip_types": ["tg_analysis"]},
        "builtin-2": {"skip_types": ["tg_analysis"]},
        "external-1": {"only_types": ["tg_analysis"]},
        "external-2": {"only_types": ["tg_analysis", "call_analysis"]},
        "plain": {},
    }

    def left_for(filters: dict[str, Any]) -> int:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                b"SELECT count(*) FROM ai_jobs WHERE model_profile = 'mixed' "
                b"AND status = 'pending' AND (%s::text[] IS NULL OR task_type = ANY(%s)) "
                b"AND NOT task_type = ANY(%s)",
                (filters.get("only_types"), filters.get("only_types"),
                 filters.get("skip_types", [])),
            ).fetchone()  # fmt: skip
        assert row is not None
        return int(row[0])

    async def run(worker: str, filters: dict[str, Any]) -> None:
        mine = taken.setdefault(worker, [])
        while True:
            jobs = await repo.claim("mixed", worker, limit=7, lease_seconds=60, **filters)
            if not jobs and left_for(filters) == 0:  # (empty while others held the heads)
                return
            for job in jobs:
                if "only_types" in filters:
                    assert job.task_type in filters["only_types"]
                if "skip_types" in filters:
                    assert job.task_type not in filters["skip_types"]
                mine.append(str(job.id))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for worker, filters in claimers.items():
            tg.start_soon(run, worker, filters)
    claimed = [job_id for ids in taken.values() for job_id in ids]
    assert len(claimed) == len(set(claimed)) == 3 * 3 * 150
    with psycopg.connect(db_url) as conn:
        left = conn.execute(
            b"SELECT count(*) FROM ai_jobs WHERE model_profile = 'mixed' AND status = 'pending'"
        ).fetchone()
    assert left == (0,)


# --- the idle worker's lookup of the next due job (next_due_in) ----------------------------
async def test_next_due_is_the_earliest_job_of_the_wanted_types_over_all_priorities(
    repo: JobRepository, db_url: str
) -> None:
    """The earliest job is in neither the first group in claim order (priority 9) nor the
    largest one; the skipped type's long-overdue jobs count only when nothing is skipped."""
    queue(
        db_url,
        ("tg_analysis", 0, 7200, 50),  # left to external workers, 2 h overdue
        ("llm_chat", 0, -3600, 50),
        ("llm_chat", 5, -1800, 20),  # the earliest of the wanted types: due in 30 min
        ("call_analysis", 9, -5400, 10),
    )
    skipping = await repo.seconds_until_due(PROFILE, skip_types=["tg_analysis"])
    everything = await repo.seconds_until_due(PROFILE)
    assert skipping is not None and 1700 < skipping <= 1800
    assert everything is not None and -7300 < everything <= -7200
    assert await repo.seconds_until_due(PROFILE, skip_types=["tg_analysis", "llm_chat"]) == (
        pytest.approx(5400, abs=100)
    )
    everyone = ["tg_analysis", "llm_chat", "call_analysis"]
    assert await repo.seconds_until_due(PROFILE, skip_types=everyone) is None
    assert await repo.seconds_until_due("no-such-profile") is None


@pytest.mark.parametrize("skip_types", [[], ["tg_analysis"]], ids=["all-types", "skipping"])
@pytest.mark.parametrize(
    "backlog",
    [
        ("tg_analysis", 0, 3600, 100_000),  # a skipped type's backlog, due
        ("call_analysis", 3, -3600, 100_000),  # jobs scheduled for later (run_after)
    ],
    ids=["skipped-due", "scheduled"],
)
def test_next_due_lookup_reads_group_heads_not_the_queue(
    db_url: str, backlog: tuple[str, int, float, int], skip_types: list[str]
) -> None:
    """The idle worker runs this each time its queue runs dry; a plain min(run_after) read
    every pending job of the profile (~10 ms at 100,000). Generic plan, as prepared."""
    queue(db_url, backlog, ("llm_chat", 0, -60, 50), ("llm_chat", 7, -120, 50), profile="p")
    params = {"model_profile": "p", "only_types": None, "skip_types": skip_types}
    lookup = queries()["next_due_in"]
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction(force_rollback=True):
        conn.execute(b"SET LOCAL plan_cache_mode = force_generic_plan")
        ((doc,),) = conn.execute(b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + lookup, params)
    plan = (doc if isinstance(doc, list) else json.loads(doc))[0]["Plan"]
    nodes = _nodes(plan)
    assert any(n.get("Index Name") == "ai_jobs_claim_type_idx" for n in nodes), nodes
    assert not any(n["Node Type"] in {"Seq Scan", "Bitmap Heap Scan"} for n in nodes), nodes
    assert max(n.get("Rows Removed by Filter", 0) for n in nodes) < 100, nodes
    for n in nodes:
        if n["Node Type"].startswith("Index"):
            pages = n["Shared Hit Blocks"] + n["Shared Read Blocks"]
            assert pages < 100 * n["Actual Loops"], n
