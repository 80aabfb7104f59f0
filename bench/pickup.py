"""Pickup latency: from the commit of one job to the start of its handler, side by side in one
run on the same PostgreSQL:

(a) ai-service: a real ``ai-service worker`` process, idle when each job arrives;
(b) the seed's behaviour, the baseline: the same worker with NOTIFY disabled and
    ``WORKER_POLL_INTERVAL=2s``;
(c) PgQueuer (psycopg driver, no-op entrypoint; its own database on the same server);
(d) the raw floor (``bench.floor``): a bare psycopg LISTEN -> SKIP LOCKED loop.

Each for sequential jobs one every 50 ms and one every 5 ms, and again (50 ms) under a
background load of 500 jobs/s inserted by another process into the same queue. t0 is read just
before the INSERT is sent (so it includes the commit); the handler records ``time.monotonic()``
(one clock for all processes on Linux) as its first act. Run alone:
``python -m bench.pickup [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench import floor, peers
from bench.common import bench_database, server_info, summary, table, write_result
from bench.workers import WorkerProcess
from service.db.queries import queries
from service.handlers.base import HandlerRegistry
from service.jobs import Job, new_id

PROFILE = "bench"
TASK = "bench_pickup"
WARMUP = 10  # first jobs of each run are not counted (connections, prepared statements)
LOAD = 500.0  # background jobs/s for the "under load" cases
CLAIM_LIMIT = "16"

TARGET_P50, TARGET_P99, TARGET_MAX = 1.0, 3.0, 20.0
TARGET_VS_FLOOR = 2.0
TARGET_VS_POLL = 500.0


# --- the handler, loaded into the worker by AI_SERVICE_EXTRA_HANDLERS=bench.pickup:register --
async def _started(job: Job) -> dict[str, float]:
    return {"t_start": time.monotonic()}


def register(registry: HandlerRegistry) -> None:
    registry.register([TASK], PROFILE, _started)


# --- ai-service -----------------------------------------------------------------------------
def start_worker(url: str, *, notify: bool = True, poll: str = "30s") -> WorkerProcess:
    return WorkerProcess(
        url, PROFILE, "bench.pickup:register",
        WORKER_NOTIFY="true" if notify else "false", WORKER_POLL_INTERVAL=poll,
        WORKER_CLAIM_LIMIT=CLAIM_LIMIT,
    )  # fmt: skip


def ai_service(
    url: str, n: int, spacing: float, *, worker: WorkerProcess | None = None,
    notify: bool = True, poll: str = "30s", load: float = 0,
) -> dict[str, Any]:  # fmt: skip
    """Sequential jobs to an idle worker (``worker``, or one started for this run and stopped
    after it)."""
    own = worker is None
    if worker is None:
        worker = start_worker(url, notify=notify, poll=poll)
    sent: dict[Any, tuple[float, float]] = {}
    bg = peers.Background(url, "ai-service", load, task=TASK, profile=PROFILE) if load else None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            create = queries()["create_job"]
            for _ in range(n + WARMUP):
                time.sleep(spacing)
                job_id = new_id()
                params = {
                    "id": job_id,
                    "owner_service": "bench",
                    "owner_ref": None,
                    "task_type": TASK,
                    "model_profile": PROFILE,
                    "priority": 0,
                    "max_attempts": 3,
                    "input": Jsonb({}),
                    "run_after": None,
                    "idempotency_key": None,
                    "trace_context": None,
                }
                t0 = time.monotonic()
                conn.execute(create, params)
                sent[job_id] = (t0, time.monotonic())
            if bg is not None:
                bg.stop()
            results: list[tuple[Any, Any]] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                results = conn.execute(
                    "SELECT id, result FROM ai_jobs WHERE status = 'completed' AND id = ANY(%s)",
                    (list(sent),),
                ).fetchall()
                if len(results) == len(sent):
                    break
                time.sleep(0.05)
            busy = b"SELECT EXISTS (SELECT 1 FROM ai_jobs WHERE status IN ('pending', 'running'))"
            while conn.execute(busy).fetchone() == (True,) and time.monotonic() < deadline:
                time.sleep(0.02)  # background jobs still in flight
            conn.execute("TRUNCATE ai_jobs")
    finally:
        if bg is not None:
            bg.stop()
        if own:
            worker.stop()
    order = {job_id: i for i, job_id in enumerate(sent)}
    counted = [(i, r) for i, r in results if order[i] >= WARMUP]
    from_send = [(r["t_start"] - sent[i][0]) * 1000 for i, r in counted]
    from_ack = [(r["t_start"] - sent[i][1]) * 1000 for i, r in counted]
    return {**summary(from_send), "from_ack": summary(from_ack), "lost": n + WARMUP - len(results)}


# --- the run --------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pickup")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 25 if args.quick else 1000
    n_poll = 5 if args.quick else 150
    n5 = 60 if args.quick else 1000
    # (case, spacing s, background jobs/s)
    cases = [("50 ms", 0.05, 0.0), ("5 ms", 0.005, 0.0), ("50 ms + 500 jobs/s", 0.05, LOAD)]
    out: dict[str, Any] = {"n": n, "n_poll": n_poll, "claim_limit": int(CLAIM_LIMIT)}
    res: dict[str, dict[str, Any]] = {}
    with bench_database() as url:
        out["server"] = server_info(url)

        def run(system: str, case: str, fn: Any, *args: Any, **kwargs: Any) -> None:
            started = time.monotonic()
            r = fn(*args, **kwargs)
            res.setdefault(system, {})[case] = r
            print(
                f"  {system}, {case}: p50 {r['p50']:.3f} p99 {r['p99']:.3f} max {r['max']:.3f} ms"
                f" ({time.monotonic() - started:.0f}s)",
                flush=True,
            )

        worker = start_worker(url)  # one process for the three cases, idle between jobs
        try:
            for case, spacing, load in cases:
                count = n5 if spacing < 0.05 else n
                run("ai-service", case, ai_service, url, count, spacing, worker=worker,
                    load=load)  # fmt: skip
        finally:
            worker.stop()
        run("seed poll 2s", "50 ms", ai_service, url, n_poll, 0.05, notify=False, poll="2s")
        with peers.sibling_database(url, "pgq") as pgq:
            peers.pgqueuer_install(pgq)
            out["pgqueuer_version"] = peers.pgqueuer_version()
            consumer = peers.PgQueuerConsumer(pgq)
            try:
                for case, spacing, load in cases:
                    count = n5 if spacing < 0.05 else n
                    run("PgQueuer", case, consumer.pickup, count, spacing,
                        background_rate=load)  # fmt: skip
            finally:
                consumer.stop()
        with peers.sibling_database(url, "floor") as fl:
            floor.setup(fl)
            for case, spacing, load in cases:
                count = n5 if spacing < 0.05 else n
                run("raw floor", case, floor.pickup, fl, count, spacing,
                    batch=10 if load else 1, background_rate=load)  # fmt: skip

    rows = []
    ours, bare, poll = res["ai-service"], res["raw floor"], res["seed poll 2s"]["50 ms"]
    for system, by_case in res.items():
        for case, r in by_case.items():
            vs_floor = r["p50"] / bare[case]["p50"] if case in bare else float("nan")
            vs_poll = poll["mean"] / r["mean"]
            r["vs_floor_p50"], r["vs_floor_p99"] = vs_floor, r["p99"] / bare[case]["p99"]
            r["poll_mean_over_this_mean"] = vs_poll
            rows.append([system, case, r["n"], r["p50"], r["p95"], r["p99"], r["max"],
                         r["mean"], vs_floor, r["vs_floor_p99"], vs_poll])  # fmt: skip
    print(table(
        "pickup latency, commit -> handler start (ms); ratios to the raw floor and the 2 s poll",
        ["system", "case", "n", "p50", "p95", "p99", "max", "mean", "p50/floor", "p99/floor",
         "poll mean/mean"],
        rows,
    ))  # fmt: skip
    idle = ours["50 ms"]
    checks = {
        "p50 <= 1 ms": idle["p50"] <= TARGET_P50,
        "p99 <= 3 ms": idle["p99"] <= TARGET_P99,
        "max <= 20 ms": idle["max"] <= TARGET_MAX,
        "p50 and p99 <= 2x the raw floor": max(idle["vs_floor_p50"], idle["vs_floor_p99"])
        <= TARGET_VS_FLOOR,
        ">= 500x lower than the poll baseline's mean": idle["poll_mean_over_this_mean"]
        >= TARGET_VS_POLL,
    }
    for name, ok in checks.items():
        print(f"target (idle, 50 ms) {name}: {'PASS' if ok else 'FAIL'}")
    out |= {"results": res, "targets": checks}
    path = write_result("pickup_quick" if args.quick else "pickup", out)
    print(f"wrote {path}")
    return 0 if all(checks.values()) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
