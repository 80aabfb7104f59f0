"""The job repository on real PostgreSQL: submission, claims, leases, failures, operators."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import anyio
import msgspec
import psycopg
import pytest

from service.db import Database, DatabaseUnavailable
from service.db.dead_runs import end_leases_of_dead_runs
from service.jobs import (
    IdempotencyConflict,
    JobFilter,
    JobNotFound,
    JobRepository,
    NewJob,
    StateConflict,
    new_id,
)
from service.jobs.model import EARLIEST, Job
from service.jobs.repository import REAPER_LOCK_KEY


def nj(**kw: Any) -> NewJob:
    base: dict[str, Any] = {
        "owner_service": "telephony",
        "task_type": "llm_chat",
        "model_profile": "qwen2.5-14b",
        "input": {"user": "hi"},
    }
    return NewJob(**(base | kw))


def expire_leases(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_jobs SET lease_expires_at = now() - interval '1 second' "
            "WHERE status = 'running'"
        )


async def test_create_and_get(repo: JobRepository) -> None:
    job, created = await repo.create(nj(owner_ref="beeline/1", priority=5))
    assert created
    assert job.status == "pending"
    assert job.attempts == 0
    assert job.max_attempts == 3
    assert job.id.version == 7
    got = await repo.get(job.id)
    assert got.owner_ref == "beeline/1"
    assert got.input == {"user": "hi"}
    assert got.priority == 5
    with pytest.raises(JobNotFound):
        await repo.get(new_id())


async def test_idempotency_same_body_returns_existing_different_body_conflicts(
    repo: JobRepository,
) -> None:
    first, created = await repo.create(nj(idempotency_key="k1"))
    again, created2 = await repo.create(nj(idempotency_key="k1"))
    assert created and not created2
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        await repo.create(nj(idempotency_key="k1", input={"user": "other"}))
    # keys are per owner_service
    other, created3 = await repo.create(nj(idempotency_key="k1", owner_service="monitoring-tg"))
    assert created3 and other.id != first.id


# Numbers jsonb stores as their decimal value and gives back as another Python type.
JSONB_REWRITES: dict[str, Any] = {"a": 1e23, "b": [1e16, 1.5e300, 0.1], "c": -0.0}


async def test_an_idempotent_repeat_of_numbers_jsonb_rewrites_is_the_same_request(
    repo: JobRepository,
) -> None:
    first, _ = await repo.create(nj(idempotency_key="num", input=JSONB_REWRITES))
    assert first.input["a"] == 10**23  # what jsonb gives back: not equal to the float 1e23
    again, created = await repo.create(nj(idempotency_key="num", input=JSONB_REWRITES))
    assert (again.id, created) == (first.id, False)
    out = await repo.create_batch([nj(idempotency_key="num", input=JSONB_REWRITES)])
    assert out == [(first.id, False)]
    with pytest.raises(IdempotencyConflict):
        await repo.create(nj(idempotency_key="num", input={**JSONB_REWRITES, "a": 1e22}))


async def test_a_key_freed_between_the_insert_and_the_read_is_taken_again(
    repo: JobRepository, db_url: str
) -> None:
    """The job holding the key is deleted (retention) right after our insert skipped it."""
    first, _ = await repo.create(nj(idempotency_key="gone"))
    real = repo._by_keys

    async def deleted_first(owner_service: str, keys: list[str]) -> dict[str, Job]:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DELETE FROM ai_jobs WHERE id = %s", (first.id,))
        repo._by_keys = real  # type: ignore[method-assign]
        return await real(owner_service, keys)

    repo._by_keys = deleted_first  # type: ignore[method-assign]
    job, created = await repo.create(nj(idempotency_key="gone"))
    assert created and job.id != first.id
    assert (await repo.get(job.id)).idempotency_key == "gone"


async def test_batch_one_statement_with_idempotent_repeats(repo: JobRepository) -> None:
    existing, _ = await repo.create(nj(idempotency_key="dup"))
    batch = [nj(owner_ref=str(i)) for i in range(500)] + [nj(idempotency_key="dup")]
    out = await repo.create_batch(batch)
    assert len(out) == 501
    assert sum(created for _, created in out) == 500
    assert out[-1] == (existing.id, False)
    assert len({i for i, _ in out}) == 501
    with pytest.raises(IdempotencyConflict):
        await repo.create_batch([nj(owner_ref="new"), nj(idempotency_key="dup", priority=9)])
    jobs, _ = await repo.list_jobs(JobFilter(owner_ref="new"))
    assert jobs == []  # nothing of the refused batch was written


# Values that text-format array literals must quote and escape (quotes, backslashes, braces,
# commas, NULL-looking strings, non-ASCII): the batch statements send their arrays in binary.
AWKWARD: list[Any] = [
    {"user": 'say "hi", {then} \\ leave', "NULL": None, "n": [1, 2.5, True]},
    "NULL",
    ["a,b", "{c}", 'd"e'],
    "",
    {"ключ": "значение ✓", "emoji": "\U0001f680"},
    12345678901234,
]


async def test_batch_arrays_keep_awkward_values_exactly(repo: JobRepository) -> None:
    batch = [
        nj(
            input={"v": v},
            owner_ref='ref "{x}", \\ NULL' if i % 2 else None,
            idempotency_key=f"k,{{{i}}}" if i % 3 else None,
            priority=[-100, 0, 100][i % 3],
            run_after=dt.datetime(2020, 1, 1, tzinfo=dt.UTC) if i % 2 else None,
        )
        for i, v in enumerate(AWKWARD)
    ]
    contexts = [{"traceparent": f"00-{i:032x}-{i:016x}-01"} if i % 2 else None
                for i in range(len(AWKWARD))]  # fmt: skip
    out = await repo.create_batch(batch, trace_contexts=contexts)
    ids = [job_id for job_id, _ in out]
    for job_id, new, context in zip(ids, batch, contexts, strict=True):
        job = await repo.get(job_id)
        assert (job.input, job.owner_ref, job.idempotency_key, job.priority, job.trace_context) == (
            new.input,
            new.owner_ref,
            new.idempotency_key,
            new.priority,
            context,
        )
    found, _ = await repo.list_jobs(JobFilter(ids=ids[:2], owner_ref=batch[1].owner_ref))
    assert [j.id for j in found] == [ids[1]]
    claimed = await repo.claim("qwen2.5-14b", "w", limit=len(AWKWARD), lease_seconds=60)
    assert {j.id for j in claimed} == set(ids)
    stored = await repo.complete_many("w", [(j.id, j.input["v"]) for j in claimed])
    assert stored == set(ids)
    for job in claimed:
        assert (await repo.get(job.id)).result == job.input["v"]


async def test_list_filters_and_keyset_pagination(repo: JobRepository) -> None:
    await repo.create_batch(
        [nj(owner_ref=f"r{i}", task_type="transcribe" if i % 3 == 0 else "llm_chat")
         for i in range(1200)]
    )  # fmt: skip
    seen: list[Any] = []
    cursor = None
    while True:
        page, cursor = await repo.list_jobs(
            JobFilter(task_type=["transcribe"]), limit=150, cursor=cursor
        )
        seen.extend(page)
        if cursor is None:
            break
    assert len(seen) == 400
    assert len({j.id for j in seen}) == 400
    assert [j.id for j in seen] == sorted((j.id for j in seen), reverse=True)
    assert all(j.task_type == "transcribe" for j in seen)
    only, nxt = await repo.list_jobs(JobFilter(owner_ref="r7"))
    assert [j.owner_ref for j in only] == ["r7"] and nxt is None


async def test_a_page_ends_before_its_inputs_and_results_pass_the_byte_budget(
    repo: JobRepository,
) -> None:
    """A page of big jobs (audio as base64) is cut short, never empty, and the pages still
    hold every job exactly once."""
    blob = os.urandom(60_000).hex()  # incompressible: ~120 KB stored
    await repo.create_batch([nj(owner_ref="big", input={"user": blob, "n": n}) for n in range(9)])

    async def pages(max_bytes: int) -> list[list[Any]]:
        out: list[list[Any]] = []
        cursor = None
        while True:
            page, cursor = await repo.list_jobs(
                JobFilter(owner_ref="big"), limit=100, cursor=cursor, max_bytes=max_bytes
            )
            out.append([j.input["n"] for j in page])
            if cursor is None:
                return out

    assert await pages(1 << 30) == [list(range(8, -1, -1))]
    assert await pages(1) == [[n] for n in range(8, -1, -1)]  # one job a page, never none
    three = await pages(300_000)  # room for two or three jobs a page
    assert all(1 < len(p) <= 3 for p in three[:-1]) and three[-1]
    assert [n for p in three for n in p] == list(range(8, -1, -1))


async def test_claim_orders_by_priority_and_respects_run_after(repo: JobRepository) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    low, _ = await repo.create(nj(priority=0))
    high, _ = await repo.create(nj(priority=10))
    await repo.create(nj(priority=100, run_after=later))
    await repo.create(nj(model_profile="voxtral-small"))
    claimed = await repo.claim("qwen2.5-14b", "w1", limit=10, lease_seconds=60)
    assert [j.id for j in claimed] == [high.id, low.id]
    assert all(j.status == "running" and j.attempts == 1 and j.worker_id == "w1" for j in claimed)
    due_in = await repo.seconds_until_due("qwen2.5-14b")  # the deferred job, on the db clock
    assert due_in is not None and 3500 < due_in <= 3600


async def test_an_unreadable_row_is_failed_at_claim_and_spares_its_batch(
    repo: JobRepository, db_url: str
) -> None:
    """The database refuses such rows (next test), but a restore or a replica applying rows
    skips triggers: a row the worker cannot read is failed for good at claim instead of
    raising and stranding the jobs claimed with it until their leases expire."""
    good, _ = await repo.create(nj(owner_ref="good"))
    bad, _ = await repo.create(nj(owner_ref="bad"))
    deep, _ = await repo.create(nj(owner_ref="deep"))
    odd_trace, _ = await repo.create(nj(owner_ref="odd-trace"))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ai_jobs DISABLE TRIGGER ai_jobs_refuse_unreadable_json")
        conn.execute("UPDATE ai_jobs SET input = '[1, 2]' WHERE id = %s", (bad.id,))
        # Past the decoders' recursion limit: before, the claim itself raised.
        conn.execute("UPDATE ai_jobs SET input = %s WHERE id = %s", (TOO_DEEP, deep.id))
        conn.execute(
            "UPDATE ai_jobs SET trace_context = '{\"traceparent\": 5}' WHERE id = %s",
            (odd_trace.id,),
        )
    claimed = await repo.claim("qwen2.5-14b", "w1", limit=10, lease_seconds=60)
    assert sorted(j.owner_ref or "" for j in claimed) == ["good", "odd-trace"]
    assert next(j for j in claimed if j.id == odd_trace.id).trace_context is None  # untraced
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT status, error_category, error_message, attempts, finished_at IS NOT NULL "
            "FROM ai_jobs WHERE id = ANY(%s) ORDER BY owner_ref",
            ([bad.id, deep.id],),
        ).fetchall()
    assert len(rows) == 2
    for status, category, message, attempts, finished in rows:
        assert (status, category, attempts, finished) == ("failed", "invalid_input", 1, True)
        assert message.startswith("the stored job cannot be read: ") and "$.input" in message
    assert await repo.claim("qwen2.5-14b", "w1", limit=10, lease_seconds=60) == []
    assert good.id in {j.id for j in claimed}


async def test_a_claim_hands_out_its_readable_jobs_when_failing_an_unreadable_one_fails(
    repo: JobRepository, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failing the unreadable row raised (the job cancelled meanwhile, the database gone) out
    of the claim, and the readable jobs it had taken waited for the orphan release."""
    good, _ = await repo.create(nj(owner_ref="good"))
    bad, _ = await repo.create(nj(owner_ref="bad"))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ai_jobs DISABLE TRIGGER ai_jobs_refuse_unreadable_json")
        conn.execute("UPDATE ai_jobs SET input = '[1, 2]' WHERE id = %s", (bad.id,))

    async def gone(*args: object, **kwargs: object) -> None:
        raise DatabaseUnavailable("server closed the connection unexpectedly")

    monkeypatch.setattr(repo, "fail", gone)
    claimed = await repo.claim("qwen2.5-14b", "w1", limit=10, lease_seconds=60)
    assert [j.id for j in claimed] == [good.id]
    assert (await repo.get(bad.id)).status == "running"  # held, unrenewed: reaped in time


TOO_DEEP = '{"x": ' * 1000 + "1" + "}" * 1000


async def test_reads_show_a_row_no_reader_could_load_as_0004_repairs_it(
    repo: JobRepository, db_url: str
) -> None:
    """Such a row (see above) is shown, not a failure of every read and listing it is in."""
    bad, _ = await repo.create(nj(owner_ref="bad"))
    deep, _ = await repo.create(nj(owner_ref="deep"))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ai_jobs DISABLE TRIGGER ai_jobs_refuse_unreadable_json")
        conn.execute(
            "UPDATE ai_jobs SET input = '[1, 2]', trace_context = '[\"x\"]' WHERE id = %s",
            (bad.id,),
        )
        conn.execute(
            "UPDATE ai_jobs SET input = %s, result = %s WHERE id = %s",
            (TOO_DEEP, TOO_DEEP, deep.id),
        )
    shown = await repo.get(bad.id)
    assert shown.input == {"value": [1, 2]} and shown.trace_context is None
    with pytest.raises(msgspec.ValidationError):  # what the worker would run on: refused
        Job.stored({**msgspec.structs.asdict(shown), "input": [1, 2]})
    shown_deep = await repo.get(deep.id)
    raw = shown_deep.input["value"]
    assert isinstance(raw, msgspec.Raw) and isinstance(shown_deep.result, msgspec.Raw)
    assert msgspec.json.encode(shown_deep.input) == ('{"value":' + TOO_DEEP + "}").encode()
    listed, _ = await repo.list_jobs(JobFilter())
    assert {j.owner_ref for j in listed} == {"bad", "deep"}


# What one UPDATE written around the API could store before migration 0004 (a loop: the
# parametrized coroutine tests do not collect here).
UNREADABLE = [
    "run_after = '-infinity'",
    "run_after = 'infinity'",
    "run_after = '0001-01-01 12:00:00+00'",
    "finished_at = '9999-12-31 00:00:00+00'",
    "lease_expires_at = 'infinity'",
    "input = '[1, 2]'",
    "input = '\"x\"'",
    "trace_context = '[\"x\"]'",
    "trace_context = '{\"traceparent\": 5}'",
    'trace_context = \'{"traceparent": ["x"]}\'',
    "input = '" + '{"x": ' * 129 + "1" + "}" * 129 + "'",  # near the decoders' recursion limit
]


async def test_the_database_refuses_what_no_reader_could_load(
    repo: JobRepository, db_url: str
) -> None:
    """Before migration 0004 one such UPDATE made every claim that met the row fail after
    marking its whole batch running (and broke listings); now the write itself is refused."""
    job, _ = await repo.create(nj())
    with psycopg.connect(db_url, autocommit=True) as conn:
        for assignment in UNREADABLE:
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(f"UPDATE ai_jobs SET {assignment} WHERE id = %s", (job.id,))
        conn.execute(
            'UPDATE ai_jobs SET trace_context = \'{"traceparent": "t"}\', '
            "run_after = '0001-01-02 00:00:00+00', input = %s WHERE id = %s",
            ('{"x": ' * 128 + "1" + "}" * 128, job.id),
        )  # the edges of what is allowed
    [claimed] = await repo.claim("qwen2.5-14b", "w1", limit=10, lease_seconds=60)
    assert claimed.trace_context == {"traceparent": "t"} and claimed.run_after == EARLIEST


async def test_concurrent_claimers_claim_every_job_exactly_once(
    repo: JobRepository, db: Database
) -> None:
    await repo.create_batch([nj(owner_ref=str(i)) for i in range(1000)])
    claims: dict[str, list[Any]] = {}

    async def claimer(name: str) -> None:
        got = claims.setdefault(name, [])
        while True:
            batch = await repo.claim("qwen2.5-14b", name, limit=7, lease_seconds=60)
            if not batch:
                return
            got.extend(j.id for j in batch)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(claimer, f"w{i}")
    all_ids = [i for ids in claims.values() for i in ids]
    assert len(all_ids) == 1000
    assert len(set(all_ids)) == 1000
    assert sum(1 for ids in claims.values() if ids) > 1  # really concurrent


async def test_lease_expiry_reclaims_and_refuses_stale_owner(
    repo: JobRepository, db_url: str
) -> None:
    job, _ = await repo.create(nj())
    [held] = await repo.claim("qwen2.5-14b", "old", limit=1, lease_seconds=60)
    expire_leases(db_url)
    # an expired lease is the reaper's to return; the claim takes pending jobs only
    assert await repo.claim("qwen2.5-14b", "new", limit=1, lease_seconds=60) == []
    assert [(r.id, r.status) for r in await repo.reap() or []] == [(job.id, "pending")]
    [again] = await repo.claim("qwen2.5-14b", "new", limit=1, lease_seconds=60)
    assert again.id == job.id and again.attempts == 2 and again.worker_id == "new"
    with pytest.raises(StateConflict) as err:
        await repo.complete(job.id, "old", {"late": True})
    assert "another worker" in str(err.value)
    assert await repo.heartbeat("old", [job.id], lease_seconds=60, default_seconds=None) == {}
    done = await repo.complete(job.id, "new", {"ok": True})
    assert done.status == "completed" and done.result == {"ok": True}
    with pytest.raises(StateConflict):
        await repo.complete(job.id, "new", {"twice": True})
    assert (await repo.get(held.id)).result == {"ok": True}


async def test_fail_backoff_then_final_after_max_attempts(repo: JobRepository) -> None:
    await repo.create(nj(max_attempts=2))
    [c1] = await repo.claim("qwen2.5-14b", "w", limit=1, lease_seconds=60)
    r1 = await repo.fail(c1.id, "w", error_category="timeout", error_message="slow", retryable=True)
    assert r1.status == "pending" and r1.attempts == 1 and r1.worker_id is None
    [c2] = await repo.claim("qwen2.5-14b", "w", limit=1, lease_seconds=60)
    r2 = await repo.fail(c2.id, "w", error_category="timeout", error_message="slow", retryable=True)
    assert r2.status == "failed" and r2.attempts == 2 and r2.finished_at is not None
    assert r2.error_category == "timeout"


async def test_backoff_delays_run_after_exponentially(db: Database) -> None:
    repo = JobRepository(db, backoff_base=10.0, backoff_max=15.0)
    job, _ = await repo.create(nj(max_attempts=5))
    delays = []
    for _ in range(3):
        [c] = await repo.claim("qwen2.5-14b", "w", limit=1, lease_seconds=60)
        assert c.id == job.id
        failed = await repo.fail(c.id, "w", error_category="x", error_message="m", retryable=True)
        delays.append((failed.run_after - failed.updated_at).total_seconds())
        await _make_due(db, job.id)  # due again now, without waiting out the backoff
    # attempt 1: 10s * [0.5, 1]; attempt 2: 20s capped to 15s * [0.5, 1]
    assert 5.0 <= delays[0] <= 10.0
    assert 7.5 <= delays[1] <= 15.0
    assert 7.5 <= delays[2] <= 15.0


async def _make_due(db: Database, job_id: Any) -> None:
    conn_url = db.url
    async with await psycopg.AsyncConnection.connect(conn_url, autocommit=True) as conn:
        await conn.execute("UPDATE ai_jobs SET run_after = now() WHERE id = %s", (job_id,))


async def test_non_retryable_fail_is_final_and_retry_resets(repo: JobRepository) -> None:
    job, _ = await repo.create(nj())
    await repo.claim("qwen2.5-14b", "w", limit=1, lease_seconds=60)
    failed = await repo.fail(
        job.id, "w", error_category="provider_rejected", error_message="bad", retryable=False
    )
    assert failed.status == "failed" and failed.attempts == 1
    retried = await repo.retry(job.id)
    assert retried.status == "pending" and retried.attempts == 0 and retried.error_category is None
    with pytest.raises(StateConflict):
        await repo.retry(job.id)  # pending cannot be retried


async def test_retry_and_cancel_by_filter(repo: JobRepository) -> None:
    await repo.create_batch([nj(owner_ref=f"a{i}") for i in range(5)])
    await repo.create_batch(
        [nj(owner_ref=f"b{i}", owner_service="monitoring-pf") for i in range(3)]
    )
    cancelled = await repo.cancel_where(JobFilter(owner_service="monitoring-pf"))
    assert len(cancelled) == 3
    assert await repo.cancel_where(JobFilter(owner_service="monitoring-pf")) == []
    claimed = await repo.claim("qwen2.5-14b", "w", limit=2, lease_seconds=60)
    retried = await repo.retry_where(JobFilter(status=["running"]))
    assert sorted(retried) == sorted(j.id for j in claimed)
    assert len(await repo.cancel_where(JobFilter())) == 5


async def test_reaper_returns_expired_to_pending_or_failed(
    repo: JobRepository, db_url: str
) -> None:
    one, _ = await repo.create(nj(max_attempts=1))
    two, _ = await repo.create(nj(max_attempts=3))
    await repo.claim("qwen2.5-14b", "dead", limit=2, lease_seconds=60)
    assert await repo.reap() == []
    expire_leases(db_url)
    reaped = {r.id: (r.status, r.model_profile, r.lost_worker) for r in await repo.reap() or []}
    assert reaped == {
        one.id: ("failed", "qwen2.5-14b", "dead"),
        two.id: ("pending", "qwen2.5-14b", "dead"),
    }
    gone = await repo.get(one.id)
    assert gone.error_category == "lease_expired" and "dead" in (gone.error_message or "")
    # the attempt back in the queue says how it ended too: not the category of the one
    # before (a second invalid_output after it is not "twice in a row")
    again = await repo.get(two.id)
    assert again.error_category == "lease_expired" and "dead" in (again.error_message or "")


async def test_a_reaped_attempt_replaces_the_previous_attempts_error(
    repo: JobRepository, db_url: str
) -> None:
    job, _ = await repo.create(nj(max_attempts=3))
    await repo.claim("qwen2.5-14b", "w", limit=1, lease_seconds=60)
    failed = await repo.fail(
        job.id, "w", error_category="invalid_output", error_message="not JSON", retryable=True
    )
    assert (failed.status, failed.error_category) == ("pending", "invalid_output")
    await repo.claim("qwen2.5-14b", "dead", limit=1, lease_seconds=60)
    expire_leases(db_url)
    await repo.reap()
    back = await repo.get(job.id)
    assert (back.status, back.attempts, back.error_category) == ("pending", 2, "lease_expired")


async def test_dev_ends_the_leases_its_dead_runs_left_and_no_others(
    repo: JobRepository, db_url: str
) -> None:
    """``ai-service dev`` starting on its embedded database: jobs held by an earlier run of
    this machine (WORKER_ID "laptop", then "/" and a process suffix) get their leases ended
    for the reaper; another machine's, or a worker id that only starts the same, keep theirs."""
    held = {}
    for worker in ("laptop/1a2b3c4d", "laptop-2/99aa88bb", "other/1a2b3c4d", "laptop_x/00"):
        await repo.create(nj(owner_ref=worker))
        [claimed] = await repo.claim("qwen2.5-14b", worker, limit=1, lease_seconds=3600)
        held[worker] = claimed.id
    assert end_leases_of_dead_runs(db_url, "laptop") == 1
    assert end_leases_of_dead_runs(db_url, "laptop") == 0  # (already ended)
    reaped = await repo.reap() or []
    assert [(r.id, r.status) for r in reaped] == [(held["laptop/1a2b3c4d"], "pending")]


async def test_one_reaper_at_a_time_across_processes(repo: JobRepository, db_url: str) -> None:
    """While another session holds the reaper lock (another process's reaper mid-turn), a
    reap skips its turn (None) and touches nothing; once the lock is free it reaps."""
    job, _ = await repo.create(nj(max_attempts=3))
    await repo.claim("qwen2.5-14b", "dead", limit=1, lease_seconds=60)
    expire_leases(db_url)
    with psycopg.connect(db_url) as other:  # a transaction: the xact lock holds until its end
        got = other.execute("SELECT pg_try_advisory_xact_lock(%s)", (REAPER_LOCK_KEY,))
        assert got.fetchone() == (True,)
        assert await repo.reap() is None
        assert (await repo.get(job.id)).status == "running"
        other.rollback()
        assert [(r.id, r.status) for r in await repo.reap() or []] == [(job.id, "pending")]


async def test_release_does_not_count_the_attempt(repo: JobRepository) -> None:
    job, _ = await repo.create(nj())
    await repo.claim("qwen2.5-14b", "w", limit=1, lease_seconds=60)
    assert await repo.release("w", [job.id]) == {job.id}
    back = await repo.get(job.id)
    assert back.status == "pending" and back.attempts == 0


async def test_complete_many_only_stores_held_jobs(repo: JobRepository, db_url: str) -> None:
    await repo.create_batch([nj() for _ in range(4)])
    claimed = await repo.claim("qwen2.5-14b", "w", limit=4, lease_seconds=60)
    ids = [j.id for j in claimed]
    await repo.cancel_where(JobFilter(ids=[ids[0]]))
    stored = await repo.complete_many("w", [(i, {"n": n}) for n, i in enumerate(ids)])
    assert stored == set(ids[1:])
    assert (await repo.get(ids[0])).status == "cancelled"
    assert (await repo.get(ids[2])).result == {"n": 2}


async def test_heartbeat_extends_only_held_leases(repo: JobRepository) -> None:
    await repo.create_batch([nj() for _ in range(2)])
    a, b = await repo.claim("qwen2.5-14b", "w", limit=2, lease_seconds=5)
    await repo.cancel_where(JobFilter(ids=[b.id]))
    held = await repo.heartbeat("w", [a.id, b.id], lease_seconds=600, default_seconds=None)
    assert set(held) == {a.id}
    renewed = await repo.get(a.id)
    assert renewed.lease_expires_at is not None and a.lease_expires_at is not None
    assert renewed.lease_expires_at > a.lease_expires_at


async def test_a_heartbeat_without_a_length_renews_for_the_last_grant_or_the_default(
    repo: JobRepository, db_url: str
) -> None:
    job, _ = await repo.create(nj())
    await repo.claim("qwen2.5-14b", "w", limit=1, lease_seconds=30)
    left = await repo.heartbeat("w", [job.id], lease_seconds=None, default_seconds=900)
    assert 25 < left[job.id] <= 30  # the claim's 30 s, on the database's clock
    # a length that cannot be told (an UPDATE by hand): the default, not a lease of 0 s
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ai_jobs SET updated_at = now(), lease_expires_at = now() + interval '0.2 s'"
        )
    left = await repo.heartbeat("w", [job.id], lease_seconds=None, default_seconds=900)
    assert 890 < left[job.id] <= 900


async def test_a_lease_ended_early_is_not_renewed(repo: JobRepository) -> None:
    """A job given up (its outcome could not be written) has its lease ended for the reaper:
    a renewal already on its way must not give it a whole lease back, held by nobody."""
    job, _ = await repo.create(nj())
    [claimed] = await repo.claim("qwen2.5-14b", "w", limit=1, lease_seconds=600)
    assert await repo.expire_lease("w", job.id, claimed.started_at)
    assert await repo.heartbeat("w", [job.id], lease_seconds=600, default_seconds=None) == {}
    assert [(r.id, r.status) for r in await repo.reap() or []] == [(job.id, "pending")]
