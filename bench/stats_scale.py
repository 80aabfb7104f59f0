"""Scale: claim latency and GET /api/v1/stats latency with 10k, 100k and 1M jobs in the table,
plus ``EXPLAIN (ANALYZE, BUFFERS)`` of the claim query at the largest size (targets: claim at
1M <= 1.2x at 10k; stats < 200 ms at 1M).

Run alone: ``python -m bench.stats_scale [--quick]``. The history is generated with one
``INSERT ... SELECT generate_series`` per step (10k, then +90k, then +900k), each followed by
``VACUUM ANALYZE``, with a realistic mix spread over 7 days: 90 % completed, 5 % failed
(3 categories), 2 % cancelled, 2 % pending, 1 % running; 3 owners, 4 task types, 3 profiles.
Claim latency is the worker's own prepared ``claim_jobs`` statement (limit 1, then limit 100)
on a separate profile with a fresh queue of pending jobs, each claim followed by completing
what it took, so the table keeps its size. ``--quick`` stops at 200,000 rows (a smoke run).

Reported beside them (no target): the built-in worker's claim (``claim_jobs_of_types``) when
jobs of a task type left to external workers (``WORKER_EXTERNAL_TASK_TYPES``) pile up ahead of
its own in the same profile — an external consumer that is down. Through the claim index alone
it stepped over them one by one (~33 ms a claim with 100,000 ahead); migration 0006's index
lets it read the head of each wanted type's queue instead. With them, the lookup an idle
built-in worker makes each time its queue runs dry (``next_due_in``: when is the next job of
its own due?), which read every pending job of the profile (~10 ms at 100,000).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx
import psycopg

from bench.api_server import api_server
from bench.common import bench_database, server_info, summary, table, write_result
from service.db.queries import queries

TARGET_MS = 200.0
LOAD = b"""
INSERT INTO ai_jobs (id, owner_service, owner_ref, task_type, model_profile, status, priority,
    attempts, max_attempts, input, result, error_category, error_message, worker_id,
    lease_expires_at, run_after, created_at, started_at, finished_at, updated_at)
SELECT gen_random_uuid(),
    (ARRAY['telephony', 'monitoring-tg', 'monitoring-pf'])[1 + g %% 3], 'ref/' || g,
    (ARRAY['llm_chat', 'call_analysis', 'transcription', 'tg_analysis'])[1 + g %% 4],
    (ARRAY['qwen2.5-14b', 'voxtral-small', 'vision'])[1 + (g / 7) %% 3],
    s.status, 0, 1, 3, '{"user": "hello"}',
    CASE WHEN s.status = 'completed' THEN '{"content": "ok"}'::jsonb END,
    CASE WHEN s.status = 'failed'
         THEN (ARRAY['timeout', 'provider_unavailable', 'invalid_input'])[1 + g %% 3] END,
    CASE WHEN s.status = 'failed' THEN 'boom' END,
    CASE WHEN s.status = 'running' THEN 'worker-1' END,
    CASE WHEN s.status = 'running' THEN now() + interval '10 minutes' END,
    t.created + interval '2 seconds', t.created,
    CASE WHEN s.status IN ('running', 'completed', 'failed') THEN t.created + interval '3 s' END,
    CASE WHEN s.status IN ('completed', 'failed', 'cancelled') THEN t.created + interval '20 s' END,
    t.created + interval '20 seconds'
FROM generate_series(%(start)s::int, %(stop)s::int) AS g,
    LATERAL (SELECT CASE WHEN g %% 100 < 90 THEN 'completed' WHEN g %% 100 < 95 THEN 'failed'
                         WHEN g %% 100 < 97 THEN 'cancelled' WHEN g %% 100 < 99 THEN 'pending'
                         ELSE 'running' END AS status) AS s,
    LATERAL (SELECT now() - (g::float8 / %(total)s::int) * interval '7 days' AS created) AS t
"""


CLAIM_PROFILE = "bench-claim"
WARMUP = 50
QUEUE = b"""
INSERT INTO ai_jobs (id, owner_service, task_type, model_profile)
SELECT gen_random_uuid(), 'bench', 'llm_chat', %s FROM generate_series(1, %s)
"""
COMPLETE = b"""
UPDATE ai_jobs SET status = 'completed', finished_at = now(), updated_at = now(),
    lease_expires_at = NULL WHERE id = ANY(%s)
"""


def claim_params(limit: int) -> dict[str, Any]:
    """What a built-in worker sends (no task-type filter; none left to external workers)."""
    return {"model_profile": CLAIM_PROFILE, "worker_id": "bench", "limit": limit,
            "lease_seconds": 300.0}  # fmt: skip


def claim_latency(url: str, claims: int, limit: int) -> dict[str, float]:
    """ms per ``claim_jobs`` (the worker's statement, prepared), each claim then completed."""
    sql = queries()["claim_jobs"]
    params = claim_params(limit)
    ms: list[float] = []
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        conn.execute(QUEUE, (CLAIM_PROFILE, (claims + WARMUP) * limit))
        conn.execute(b"ANALYZE ai_jobs")
        for i in range(claims + WARMUP):
            t0 = time.perf_counter()
            rows = conn.execute(sql, params).fetchall()
            elapsed = (time.perf_counter() - t0) * 1000
            assert len(rows) == limit, len(rows)
            conn.execute(COMPLETE, ([r[0] for r in rows],))
            if i >= WARMUP:  # the plan, the caches
                ms.append(elapsed)
    return summary(ms)


EXTERNAL_PROFILE = "bench-external"
EXTERNAL = b"""
INSERT INTO ai_jobs (id, owner_service, task_type, model_profile, run_after)
SELECT gen_random_uuid(), 'bench', %s, %s, now() - make_interval(secs => %s)
FROM generate_series(1, %s)
"""


def external_backlog(
    url: str, backlogs: list[int], claims: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """ms per built-in claim (limit 1, ``tg_analysis`` left to external workers) with
    ``backlog`` such jobs older than every job of its own, in the same profile; and ms per
    idle lookup of its next due job once its own queue is empty (the backlog still there)."""
    sql = queries()["claim_jobs_of_types"]
    params = {**claim_params(1), "model_profile": EXTERNAL_PROFILE, "only_types": None,
              "skip_types": ["tg_analysis"]}  # fmt: skip
    out: dict[str, dict[str, float]] = {}
    idle: dict[str, dict[str, float]] = {}
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        for backlog in backlogs:
            conn.execute(b"DELETE FROM ai_jobs WHERE model_profile = %s", (EXTERNAL_PROFILE,))
            conn.execute(EXTERNAL, ("tg_analysis", EXTERNAL_PROFILE, 3600, backlog))
            conn.execute(EXTERNAL, ("llm_chat", EXTERNAL_PROFILE, 60, claims + WARMUP))
            conn.execute(b"ANALYZE ai_jobs")
            ms: list[float] = []
            for i in range(claims + WARMUP):
                t0 = time.perf_counter()
                rows = conn.execute(sql, params).fetchall()
                elapsed = (time.perf_counter() - t0) * 1000
                assert len(rows) == 1, len(rows)
                conn.execute(COMPLETE, ([r[0] for r in rows],))
                if i >= WARMUP:
                    ms.append(elapsed)
            out[str(backlog)] = summary(ms)
            lookup = queries()["next_due_in"]
            ms = []
            for i in range(claims + WARMUP):
                t0 = time.perf_counter()
                ((due,),) = conn.execute(lookup, params).fetchall()
                if i >= WARMUP:
                    ms.append((time.perf_counter() - t0) * 1000)
            assert due is None, due  # only the external jobs are left
            idle[str(backlog)] = summary(ms)
        conn.execute(b"DELETE FROM ai_jobs WHERE model_profile = %s", (EXTERNAL_PROFILE,))
    return out, idle


def explain_claim(url: str) -> str:
    """The plan of the worker's claim (limit 100), executed in a transaction rolled back."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(QUEUE, (CLAIM_PROFILE, 100))
    params = claim_params(100)
    with psycopg.connect(url) as conn:
        sql = b"EXPLAIN (ANALYZE, BUFFERS) " + queries()["claim_jobs"]
        plan = "\n".join(str(r[0]) for r in conn.execute(sql, params).fetchall())
        conn.rollback()
    return plan


def stats_latency(base: str, rows: int, requests: int) -> tuple[dict[str, float], Any]:
    with httpx.Client(base_url=base, timeout=60) as client:
        first = client.get("/api/v1/stats")
        assert first.status_code == 200, first.text[:300]
        ms: list[float] = []
        for _ in range(requests):
            t0 = time.perf_counter()
            r = client.get("/api/v1/stats")
            ms.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200
    return summary(ms), first.json()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stats_scale")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [10_000, 100_000, 200_000] if args.quick else [10_000, 100_000, 1_000_000]
    total = sizes[-1]
    requests = 20 if args.quick else 100
    claims = 100 if args.quick else 300
    out: dict[str, Any] = {"sizes": sizes, "steps": {}}
    rows_out = []
    with bench_database() as url, api_server(url) as base:
        loaded = 0
        for size in sizes:
            t0 = time.monotonic()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(LOAD, {"start": loaded + 1, "stop": size, "total": total})
                conn.execute(b"VACUUM ANALYZE ai_jobs")
            loaded = size
            load_s = time.monotonic() - t0
            c1 = claim_latency(url, claims, 1)
            c100 = claim_latency(url, max(10, claims // 10), 100)
            st, first = stats_latency(base, size, requests)
            out["steps"][str(size)] = {"load_s": load_s, "claim_1_ms": c1, "claim_100_ms": c100,
                                       "stats_ms": st}  # fmt: skip
            rows_out.append([size, c1["p50"], c1["p99"], c100["p50"], c100["p99"], st["p50"],
                             st["p99"]])  # fmt: skip
            print(f"  {size} rows (loaded in {load_s:.1f}s): claim p50 {c1['p50']:.3f} ms, "
                  f"stats p50 {st['p50']:.1f} ms", flush=True)  # fmt: skip
        out["first_stats_response"] = first
        out["explain_claim"] = explain_claim(url)
        backlogs = [0, 10_000] if args.quick else [0, 10_000, 100_000]
        ext, idle = external_backlog(url, backlogs, claims)
        out["external_backlog_claim_ms"], out["external_backlog_next_due_ms"] = ext, idle
        out["server"] = server_info(url)
    print(table(
        "claim (prepared claim_jobs, limit 1 and 100) and GET /api/v1/stats, ms",
        ["rows", "claim1 p50", "claim1 p99", "claim100 p50", "claim100 p99", "stats p50",
         "stats p99"],
        rows_out,
    ))  # fmt: skip
    print(table(
        "built-in claim (limit 1) behind jobs left to external workers, same profile, ms",
        ["external jobs ahead", "p50", "p99"],
        [[int(b), v["p50"], v["p99"]] for b, v in ext.items()],
    ))  # fmt: skip
    print(table(
        "idle built-in worker's next-due lookup (next_due_in) behind the same jobs, ms",
        ["external jobs pending", "p50", "p99"],
        [[int(b), v["p50"], v["p99"]] for b, v in idle.items()],
    ))  # fmt: skip
    print(f"EXPLAIN (ANALYZE, BUFFERS) of claim_jobs (limit 100) at {total} rows:")
    print(out["explain_claim"])
    small, big = out["steps"][str(sizes[0])], out["steps"][str(total)]
    ratio = big["claim_1_ms"]["p50"] / small["claim_1_ms"]["p50"]
    ratio100 = big["claim_100_ms"]["p50"] / small["claim_100_ms"]["p50"]
    out["claim_ratio_largest_vs_10k"] = {"limit_1": ratio, "limit_100": ratio100}
    checks = {
        f"claim at {total} <= 1.2x at 10k (p50, limit 1)": ratio <= 1.2,
        f"stats at {total} < {TARGET_MS:.0f} ms (p99)": big["stats_ms"]["p99"] < TARGET_MS,
    }
    for name, ok in checks.items():
        print(f"target {name}: {'PASS' if ok else 'FAIL'} "
              f"(claim ratio {ratio:.2f}x, limit 100 {ratio100:.2f}x)")  # fmt: skip
    out["targets"] = checks
    name = "stats_scale_quick" if args.quick else "stats_scale"
    path = write_result(name, {**out, "target_ms": TARGET_MS, "pass": all(checks.values())})
    print(f"wrote {path}")
    return 0 if all(checks.values()) or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
