"""GET /api/v1/stats on a table of 1,000,000 jobs, over HTTP (acceptance: < 200 ms).

Run alone: ``python -m bench.stats_scale [--quick]``. The table is filled in one SQL statement
with a realistic mix spread over 7 days: 90 % completed, 5 % failed (3 categories),
2 % cancelled, 2 % pending, 1 % running; 3 owners, 4 task types, 3 profiles. ``--quick`` loads
200,000 rows instead (a smoke run, not the acceptance figure).
"""

from __future__ import annotations

import argparse
import time

import httpx
import psycopg

from bench.api_server import api_server
from bench.common import bench_database, server_info, summary, table, write_result

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
FROM generate_series(1, %(rows)s) AS g,
    LATERAL (SELECT CASE WHEN g %% 100 < 90 THEN 'completed' WHEN g %% 100 < 95 THEN 'failed'
                         WHEN g %% 100 < 97 THEN 'cancelled' WHEN g %% 100 < 99 THEN 'pending'
                         ELSE 'running' END AS status) AS s,
    LATERAL (SELECT now() - (g::float8 / %(rows)s) * interval '7 days' AS created) AS t
"""


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stats_scale")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = 200_000 if args.quick else 1_000_000
    requests = 30 if args.quick else 100
    with bench_database() as url:
        t0 = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(LOAD, {"rows": rows})
            conn.execute(b"VACUUM ANALYZE ai_jobs")
        print(f"loaded {rows} jobs in {time.monotonic() - t0:.1f}s")
        with api_server(url) as base, httpx.Client(base_url=base, timeout=60) as client:
            first = client.get("/api/v1/stats")
            assert first.status_code == 200, first.text[:300]
            total = sum(first.json()["totals"].values())
            assert total == rows, total
            ms: list[float] = []
            for _ in range(requests):
                t0 = time.perf_counter()
                r = client.get("/api/v1/stats")
                ms.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
        info = server_info(url)
    s = summary(ms)
    print(table(
        f"GET /api/v1/stats on {rows} jobs, ms",
        ["n", "mean", "p50", "p95", "p99", "max"],
        [[s["n"], s["mean"], s["p50"], s["p95"], s["p99"], s["max"]]],
    ))  # fmt: skip
    ok = s["p99"] < TARGET_MS
    verdict = "PASS" if ok else "FAIL"
    print(f"acceptance (stats on {rows} rows < {TARGET_MS:.0f} ms at p99): {verdict}")
    name = "stats_scale_quick" if args.quick else "stats_scale"
    path = write_result(name, {"rows": rows, "stats_ms": s, "target_ms": TARGET_MS, "pass": ok,
                               "first_response": first.json(), "server": info})  # fmt: skip
    print(f"wrote {path}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
