"""Pickup latency: from the commit of one job to the start of its handler, in a real
``ai-service worker`` process that is idle when each job arrives (one job every 50 ms, and
every 5 ms). Then the same with NOTIFY disabled and a 2 s fallback poll, which is how the seed
service behaved: the baseline.

t0 is read just before the INSERT is sent (it includes the commit, as ``bench.floor`` does);
"from ack" is measured from the moment the INSERT returned. The handler records
``time.monotonic()`` (one clock for all processes on Linux) as its first act and returns it as
the job's result. Run alone: ``python -m bench.pickup [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from bench.common import RESULTS, bench_database, server_info, summary, table, write_result
from service.config import FIELDS
from service.db.queries import queries
from service.handlers.base import HandlerRegistry
from service.jobs import Job, new_id

PROFILE = "bench"
TASK = "bench_pickup"
ROOT = Path(__file__).resolve().parent.parent
WARMUP = 10  # first jobs of each run are not counted (connections, prepared statements)


# --- the handler, loaded into the worker by AI_SERVICE_EXTRA_HANDLERS=bench.pickup:register --
async def _started(job: Job) -> dict[str, float]:
    return {"t_start": time.monotonic()}


def register(registry: HandlerRegistry) -> None:
    registry.register([TASK], PROFILE, _started)


# --- the measurement ----------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_worker(url: str, *, notify: bool, poll: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    env |= {
        "DATABASE_URL": url,
        "MIGRATE_ON_START": "false",
        "WORKER_HTTP_HOST": "127.0.0.1",
        "WORKER_HTTP_PORT": str(port),
        "WORKER_NOTIFY": "true" if notify else "false",
        "WORKER_POLL_INTERVAL": poll,
        "LOG_LEVEL": "warning",
        "AI_SERVICE_EXTRA_HANDLERS": "bench.pickup:register",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "worker", "--profile", PROFILE], env=env, cwd=ROOT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with {proc.returncode}")
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/worker/status", timeout=2).json()
            if status["profiles"][PROFILE]["state"] == "idle" and status["listener"]["state"] in (
                "connected",
                "disabled",
            ):
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the worker did not become ready")


def _run(url: str, n: int, spacing: float, *, notify: bool, poll: str) -> dict[str, Any]:
    proc, _ = _start_worker(url, notify=notify, poll=poll)
    sent: dict[Any, tuple[float, float]] = {}
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
            results: list[tuple[Any, Any]] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                results = conn.execute(
                    "SELECT id, result FROM ai_jobs WHERE task_type = %s AND status = 'completed'"
                    " AND id = ANY(%s)",
                    (TASK, list(sent)),
                ).fetchall()
                if len(results) == len(sent):
                    break
                time.sleep(0.05)
            conn.execute("DELETE FROM ai_jobs")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    order = {job_id: i for i, job_id in enumerate(sent)}
    counted = [(i, r) for i, r in results if order[i] >= WARMUP]
    from_send = [(r["t_start"] - sent[i][0]) * 1000 for i, r in counted]
    from_ack = [(r["t_start"] - sent[i][1]) * 1000 for i, r in counted]
    return {
        "from_send": summary(from_send),
        "from_ack": summary(from_ack),
        "lost": n + WARMUP - len(results),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    n_poll = 40 if args.quick else 150
    cases = [
        ("NOTIFY, one job every 50 ms", n, 0.05, True, "30s"),
        ("NOTIFY, one job every 5 ms", n, 0.005, True, "30s"),
        ("seed baseline: poll 2s, every 50 ms", n_poll, 0.05, False, "2s"),
        ("seed baseline: poll 2s, every 5 ms", n_poll, 0.005, False, "2s"),
    ]
    out: dict[str, Any] = {}
    rows = []
    with bench_database() as url:
        info = server_info(url)
        for name, count, spacing, notify, poll in cases:
            r = _run(url, count, spacing, notify=notify, poll=poll)
            out[name] = r
            s, a = r["from_send"], r["from_ack"]
            rows.append([name, s["n"], s["p50"], s["p99"], s["max"], a["p50"], a["p99"]])
            print(f"  {name}: p50 {s['p50']:.3f} ms, p99 {s['p99']:.3f} ms", flush=True)
    print(
        table(
            "pickup latency, commit -> handler start (ms)",
            ["case", "n", "p50", "p99", "max", "p50 from ack", "p99 from ack"],
            rows,
        )
    )
    floor = _floor()
    if floor:
        for key, name in (("pickup_50ms", cases[0][0]), ("pickup_5ms", cases[1][0])):
            ours, bare = out[name]["from_send"], floor[key]
            out[name]["vs_floor"] = {q: ours[q] / bare[q] for q in ("p50", "p99")}
            print(
                f"{name}: {ours['p50'] / bare['p50']:.2f}x the raw floor's p50 "
                f"({bare['p50']:.3f} ms), {ours['p99'] / bare['p99']:.2f}x its p99 "
                f"({bare['p99']:.3f} ms)"
            )
    else:
        print(
            "(run `python -m bench.floor` first to compare with the raw LISTEN/SKIP LOCKED floor)"
        )
    path = write_result("pickup", {"server": info, "cases": out, "floor": floor})
    print(f"written to {path}")


def _floor() -> dict[str, Any] | None:
    """The latest ``bench.floor`` figures from this machine, if that benchmark has run."""
    path = RESULTS / "floor.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


if __name__ == "__main__":
    main()
