"""Saturation: does one worker process keep a GPU server busy?

The simulated GPU server (``ai-service simulate-provider``, its own process) runs at most C
requests at once, each taking a fixed L (no per-token or per-audio-second part), so it can do
at most C/L requests per second. One real ``ai-service worker`` process, with the built-in
handlers pointed at it and a claim limit of 2·C (C running on the "GPU", C queued there while
results are written and new jobs claimed), drains a backlog of jobs. Achieved throughput is
the jobs over the time from the first claim to the last ``finished_at`` (both on the database's
clock), after a warm-up batch that opens the connections. Target: ≥ 95% of C/L.

Cases: chat (``llm_chat``) at C=16, L=200 ms and transcription (``transcribe``, a 0.5 s WAV
sent as ``audio_base64``) at C=8, L=1 s. Run alone: ``python -m bench.saturation [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.common import (
    bench_database,
    server_info,
    stop_process,
    summary,
    table,
    wait_http,
    write_result,
)
from service.config import FIELDS
from tests.helpers import free_port, wav_base64

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.95
LLM = "qwen2.5-14b"
VOXTRAL = "voxtral-small"

INSERT = b"""
INSERT INTO ai_jobs (id, owner_service, owner_ref, task_type, model_profile, input)
SELECT gen_random_uuid(), 'bench', %(tag)s, %(task)s, %(profile)s, %(input)s
FROM generate_series(1, %(n)s)
"""
PROGRESS = b"""
SELECT count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')) AS done,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM ai_jobs WHERE owner_ref = %(tag)s
"""
TIMES = b"""
SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 AS span,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       array_agg(extract(epoch FROM finished_at - started_at)::float8) AS runs,
       max(attempts) AS max_attempts
FROM ai_jobs WHERE owner_ref = %(tag)s
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}


@contextmanager
def simulator(capacity: int, latency_ms: float) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "simulate-provider", "--host", "127.0.0.1",
         "--port", str(port), "--capacity", str(capacity), "--latency-ms", str(latency_ms),
         "--per-token-ms", "0", "--per-audio-second-ms", "0"],
        env={**_clean_env(), "LOG_LEVEL": "warning"}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc)
        yield url
    finally:
        stop_process(proc)


@contextmanager
def worker(db_url: str, sim_url: str, profile: str, claim_limit: int) -> Iterator[None]:
    port = free_port()
    env = _clean_env() | {
        "DATABASE_URL": db_url,
        "MIGRATE_ON_START": "false",
        "LLM_BASE_URL": sim_url,
        "VOXTRAL_BASE_URL": sim_url,
        "WORKER_HTTP_HOST": "127.0.0.1",
        "WORKER_HTTP_PORT": str(port),
        "WORKER_CLAIM_LIMIT": str(claim_limit),
        "LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "worker", "--profile", profile], env=env, cwd=ROOT
    )
    try:
        wait_http(
            f"http://127.0.0.1:{port}/worker/status",
            proc,
            ok=lambda s: (
                s["profiles"][profile]["state"] == "idle" and s["listener"]["state"] == "connected"
            ),
        )
        yield
    finally:
        stop_process(proc)


def _drain(conn: psycopg.Connection[Any], tag: str, task: str, profile: str, n: int,
           data: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    conn.execute(INSERT, {"tag": tag, "task": task, "profile": profile, "n": n,
                          "input": Jsonb(data)})  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        row = conn.execute(PROGRESS, {"tag": tag}).fetchone()
        assert row is not None
        if row[0] >= n:
            break
        time.sleep(0.1)
    else:
        raise SystemExit(f"{tag}: the jobs did not finish")
    span, completed, runs, attempts = conn.execute(TIMES, {"tag": tag}).fetchone() or (0, 0, [], 0)
    return {"span_s": span, "completed": completed, "runs": runs, "max_attempts": attempts}


def run_case(db_url: str, name: str, task: str, profile: str, capacity: int, latency_ms: float,
             jobs: int, data: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    ideal = capacity / (latency_ms / 1000)
    with (
        psycopg.connect(db_url, autocommit=True) as conn,
        simulator(capacity, latency_ms) as sim,
        worker(db_url, sim, profile, 2 * capacity),
    ):
        _drain(conn, f"{name}-warmup", task, profile, 2 * capacity, data)
        r = _drain(conn, name, task, profile, jobs, data)
    achieved = r["completed"] / r["span_s"] if r["span_s"] else float("nan")
    runs = summary([x * 1000 for x in r["runs"]])
    return {
        "task_type": task,
        "capacity": capacity,
        "latency_ms": latency_ms,
        "jobs": jobs,
        "completed": r["completed"],
        "claim_limit": 2 * capacity,
        "span_s": r["span_s"],
        "ideal_jobs_per_s": ideal,
        "achieved_jobs_per_s": achieved,
        "ratio": achieved / ideal,
        "pass": r["completed"] == jobs and achieved / ideal >= TARGET,
        "job_run_ms": runs,
        "max_attempts": r["max_attempts"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds = 5 if args.quick else 40  # of saturated work per case
    chat = {"system": "Be brief.", "user": "Classify this call.", "max_tokens": 16}
    audio = {"audio_base64": wav_base64(0.5, 16000), "language": "en"}
    cases: list[tuple[str, str, str, int, float, dict[str, Any]]] = [
        ("chat C=16 L=200ms", "llm_chat", LLM, 16, 200.0, chat),
        ("transcription C=8 L=1s", "transcribe", VOXTRAL, 8, 1000.0, audio),
    ]
    if not args.quick:  # a GPU server sized like a real vLLM (--max-num-seqs 64): pool scaling
        cases.append(("chat C=64 L=200ms", "llm_chat", LLM, 64, 200.0, chat))
    out: dict[str, Any] = {}
    rows = []
    with bench_database() as url:
        info = server_info(url)
        for name, task, profile, c, lat, data in cases:
            jobs = int(c / (lat / 1000) * seconds)
            r = run_case(url, name, task, profile, c, lat, jobs, data)
            out[name] = r
            rows.append([name, r["jobs"], r["ideal_jobs_per_s"], r["achieved_jobs_per_s"],
                         f"{100 * r['ratio']:.1f}%", r["job_run_ms"]["p50"],
                         "yes" if r["pass"] else "NO"])  # fmt: skip
            print(f"  {name}: {r['achieved_jobs_per_s']:.2f} jobs/s of {r['ideal_jobs_per_s']:.0f} "
                  f"({100 * r['ratio']:.1f}%)", flush=True)  # fmt: skip
    print(
        table(
            f"saturation: one worker process vs a simulated GPU server (target >= {TARGET:.0%})",
            ["case", "jobs", "C/L jobs/s", "achieved jobs/s", "of C/L", "job p50 ms", "pass"],
            rows,
        )
    )
    path = write_result(
        "saturation_quick" if args.quick else "saturation",
        {"server": info, "target": TARGET, "cases": out},
    )
    print(f"written to {path}")
    if not all(r["pass"] for r in out.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
