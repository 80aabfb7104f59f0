"""POST /api/v1/jobs/batch with 10,000 jobs, end to end over HTTP (acceptance: < 1 s), the
latency of single POST /api/v1/jobs, and single creates from 32 concurrent clients (target
>= 2,000 requests/s; the load comes from ``bench.loadgen`` in a separate process).

Run alone: ``python -m bench.submit [--quick]``. The server runs in this process (a thread) on
the embedded PostgreSQL with durable settings; times are wall-clock from sending the request to
having the whole response, with the request body encoded beforehand.
"""

from __future__ import annotations

import argparse
import time

import httpx
import msgspec

from bench.api_server import api_server
from bench.common import bench_database, server_info, summary, table, write_result
from bench.loadgen import post_load

BATCH = 10_000
TARGET_MS = 1000.0
CLIENTS = 32
TARGET_RPS = 2000.0


def batch_body(run: int) -> bytes:
    jobs = [
        {"owner_ref": f"call/{run}/{i}", "input": {"user": f"analyse call {i}", "max_tokens": 256}}
        for i in range(BATCH)
    ]
    defaults = {"owner_service": "telephony", "task_type": "call_analysis",
                "model_profile": "qwen2.5-14b"}  # fmt: skip
    return msgspec.json.encode({"defaults": defaults, "jobs": jobs})


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.submit")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 5 if args.quick else 20
    singles = 200 if args.quick else 1000
    load_s = 4.0 if args.quick else 15.0
    with bench_database() as url, api_server(url) as base:
        with httpx.Client(base_url=base, timeout=60) as client:
            headers = {"content-type": "application/json"}
            client.post("/api/v1/jobs/batch", content=batch_body(-1), headers=headers)  # warm-up
            batch_ms: list[float] = []
            for run in range(runs):
                body = batch_body(run)
                t0 = time.perf_counter()
                r = client.post("/api/v1/jobs/batch", content=body, headers=headers)
                batch_ms.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 201 and r.json()["created"] == BATCH, r.text[:300]
            single_ms: list[float] = []
            one = {"owner_service": "telephony", "task_type": "llm_chat",
                   "model_profile": "qwen2.5-14b", "input": {"user": "hi"}}  # fmt: skip
            for _ in range(singles):
                t0 = time.perf_counter()
                r = client.post("/api/v1/jobs", json=one)
                single_ms.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 201
            one_body = msgspec.json.encode(one)
        load = post_load(base, "/api/v1/jobs", one_body, clients=CLIENTS, seconds=load_s)
        info = server_info(url)
    b, s = summary(batch_ms), summary(single_ms)
    print(table(
        f"POST /api/v1/jobs/batch ({BATCH} jobs) and POST /api/v1/jobs, ms",
        ["request", "n", "p50", "p95", "p99", "max"],
        [[f"batch of {BATCH}", b["n"], b["p50"], b["p95"], b["p99"], b["max"]],
         ["single job", s["n"], s["p50"], s["p95"], s["p99"], s["max"]]],
    ))  # fmt: skip
    lat = load["latency_ms"]
    print(table(
        f"POST /api/v1/jobs from {CLIENTS} concurrent keep-alive clients ({load_s:.0f} s, "
        "bench.loadgen in its own process)",
        ["req/s", "requests", "errors", "p50 ms", "p99 ms", "max ms"],
        [[load["req_per_s"], load["requests"], load["errors"], lat["p50"], lat["p99"],
          lat["max"]]],
    ))  # fmt: skip
    checks = {
        f"batch of {BATCH} < {TARGET_MS:.0f} ms at p99": b["p99"] < TARGET_MS,
        f"single creates >= {TARGET_RPS:.0f} req/s at {CLIENTS} clients": load["req_per_s"]
        >= TARGET_RPS
        and not load["errors"],
    }
    for name, passed in checks.items():
        print(f"target {name}: {'PASS' if passed else 'FAIL'}")
    ok = all(checks.values())
    path = write_result(
        "submit_quick" if args.quick else "submit",
        {"batch_size": BATCH, "batch_ms": b, "single_ms": s, "target_ms": TARGET_MS,
         "concurrent_creates": load, "target_rps": TARGET_RPS, "targets": checks,
         "pass": ok, "server": info},
    )  # fmt: skip
    print(f"wrote {path}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
