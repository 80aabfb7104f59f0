"""Throughput with a no-op handler: jobs/s for real ``ai-service worker`` processes (1 and 2),
PgQueuer (psycopg driver, its ``tools/benchmark.py``-style drain) and the raw floor, all on the
same PostgreSQL in the same run.

Drain: N jobs are inserted in one statement while the workers idle (one NOTIFY at commit); the
rate is N over the time from that commit to the last ``finished_at`` (both on the database's
clock). Steady state: a producer keeps a backlog of 1 to 2 batches of 1,000 jobs for a fixed
window; the rate is the completions inside the window after a warm-up.

Run alone: ``python -m bench.throughput [--quick]``. ``--profile`` also records a py-spy
profile of one worker during an extra 1-process drain (always in the full run); its summary
(self and inclusive samples per function) is saved in the JSON.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench import floor, noop, peers
from bench.common import bench_database, server_info, table, write_result
from bench.workers import WorkerProcess

TARGET_ONE = 11_000.0
TARGET_SCALE = 1.6
CLAIM_LIMIT = "1000"

INSERT = b"""
INSERT INTO ai_jobs (id, owner_service, task_type, model_profile)
SELECT gen_random_uuid(), 'bench', %(task)s, %(profile)s FROM generate_series(1, %(n)s)
"""


def start_workers(url: str, count: int, **env: str) -> list[WorkerProcess]:
    env = {"WORKER_CLAIM_LIMIT": CLAIM_LIMIT, "DB_POOL_SIZE": "4", **env}
    return [WorkerProcess(url, noop.PROFILE, "bench.noop:register", **env) for _ in range(count)]


def wait_done(conn: psycopg.Connection[Any], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            b"SELECT EXISTS (SELECT 1 FROM ai_jobs WHERE status = 'pending') "
            b"OR EXISTS (SELECT 1 FROM ai_jobs WHERE status = 'running')"
        ).fetchone()
        if row is not None and not row[0]:
            return
        time.sleep(0.05)
    raise SystemExit("the drain did not finish")


def drain(
    url: str, n: int, workers: list[WorkerProcess], profile_to: Path | None = None
) -> dict[str, Any]:
    spy: subprocess.Popen[bytes] | None = None
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(b"TRUNCATE ai_jobs")
        if profile_to:
            spy = _py_spy(workers[0].pid, profile_to)
        with conn.transaction():
            conn.execute(INSERT, {"task": noop.TASK, "profile": noop.PROFILE, "n": n})
            # planner statistics that know the queue (ANALYZE counts this transaction's
            # rows); the workers are woken by the NOTIFY at commit
            conn.execute(b"ANALYZE ai_jobs")
        row = conn.execute(b"SELECT clock_timestamp()").fetchone()
        assert row is not None
        committed = row[0]
        cpu0 = _cpu(workers, conn)
        wait_done(conn)
        cpu1 = _cpu(workers, conn)
        row = conn.execute(
            b"SELECT count(*) FILTER (WHERE status = 'completed'), max(finished_at), "
            b"max(attempts) FROM ai_jobs"
        ).fetchone()
        assert row is not None
        completed, last, attempts = row
    if spy is not None:
        spy.wait(60)
    elapsed = (last - committed).total_seconds()
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    return {
        "jobs": n,
        "completed": completed,
        "max_attempts_seen": attempts,
        "seconds": elapsed,
        "jobs_per_s": completed / elapsed,
        # CPU seconds spent during the drain: where the 2 cores went
        "cpu_s": cpu,
        "cpu_us_per_job": {k: v / max(1, completed) * 1e6 for k, v in cpu.items()},
    }


def _cpu(workers: list[WorkerProcess], conn: psycopg.Connection[Any]) -> dict[str, float]:
    """CPU seconds (user + system) so far of the worker processes and of this PostgreSQL
    server (the postmaster of our backend and all its children)."""

    def used(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    postmaster = psutil.Process(psutil.Process(conn.info.backend_pid).ppid())
    pg = used(postmaster) + sum(used(c) for c in postmaster.children())
    return {"workers": sum(used(psutil.Process(w.pid)) for w in workers), "postgres": pg}


def steady(url: str, seconds: float, batch: int = 1000) -> dict[str, Any]:
    """A producer keeps 1-2 batches pending; completions per second inside the window."""
    stop = threading.Event()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(b"TRUNCATE ai_jobs")

        def produce() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                while not stop.is_set():
                    row = conn.execute(
                        b"SELECT count(*) FROM ai_jobs WHERE status = 'pending'"
                    ).fetchone()
                    if row is not None and row[0] < batch:
                        conn.execute(
                            INSERT, {"task": noop.TASK, "profile": noop.PROFILE, "n": batch}
                        )
                    else:
                        time.sleep(0.002)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        warmup = min(2.0, seconds / 3)
        time.sleep(warmup)
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(b"SELECT clock_timestamp()").fetchone()
            assert row is not None
            t_start = row[0]
            time.sleep(seconds)
            row = conn.execute(b"SELECT clock_timestamp()").fetchone()
            assert row is not None
            t_end = row[0]
            stop.set()
            producer.join()
            wait_done(conn)  # leave an empty queue to whatever runs next
            row = conn.execute(
                b"SELECT count(*) FROM ai_jobs WHERE finished_at >= %s AND finished_at < %s",
                (t_start, t_end),
            ).fetchone()
            assert row is not None
            done = row[0]
    finally:
        stop.set()
    window = (t_end - t_start).total_seconds()
    return {"window_s": window, "completed": done, "jobs_per_s": done / window}


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample counts of a py-spy ``raw`` (collapsed stacks) profile, with
    the event loop's idle wait (``select``) counted apart."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames, n = stack.split(";"), int(count)
        if frames[-1].startswith("select ("):
            idle += n
            continue
        busy += n
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "self": own.most_common(top),
        "inclusive": [(f, c) for f, c in incl.most_common(top + 15) if c < busy][:top],
    }


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("(py-spy is not installed: no profile; pip install -e '.[bench]')")
        return None
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", "5", "--rate", "250",
         "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


_ROOT_FRAMES = (
    "runpy", "runners.py", "base_events.py", "_eventloop.py", "cli.py", "events.py",
    "__main__.py", "worker/main.py:2", "_tasks.py:327", "AsyncIOBackend.run",
)  # fmt: skip


def _print_profile(p: dict[str, Any]) -> None:
    busy = max(1, p["busy_samples"])
    print(f"py-spy, 1-process drain: {p['busy_samples']} busy samples, {p['idle_samples']} idle;"
          " top inclusive (below the event loop):")  # fmt: skip
    shown = [(f, c) for f, c in p["inclusive"] if not any(r in f for r in _ROOT_FRAMES)]
    for frame, count in shown[:15]:
        print(f"  {100 * count / busy:5.1f}%  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the 1-process drain")
    parser.add_argument("--only", choices=["ai", "pgqueuer", "floor"], default=None)
    args = parser.parse_args()
    # 50,000 as PgQueuer's tools/benchmark.py drain; the floor itself slows with a larger
    # backlog (each claim steps over the index entries of the rows claimed before it)
    n = 10_000 if args.quick else 50_000
    window = 2.0 if args.quick else 10.0
    out: dict[str, Any] = {"jobs": n}
    rows: list[list[Any]] = []
    with bench_database() as url:
        out["server"] = server_info(url)
        if args.only in (None, "ai"):
            for procs in (1, 2):
                workers = start_workers(url, procs)
                try:
                    d = drain(url, n, workers)
                    out[f"ai_drain_{procs}p"] = d
                    rows.append([f"ai-service drain, {procs} process", d["jobs_per_s"]])
                    print(f"  ai-service drain, {procs}p: {d['jobs_per_s']:,.0f} jobs/s",
                          flush=True)  # fmt: skip
                    s = steady(url, window)
                    out[f"ai_steady_{procs}p"] = s
                    rows.append([f"ai-service steady state, {procs} process", s["jobs_per_s"]])
                    print(f"  ai-service steady, {procs}p: {s['jobs_per_s']:,.0f} jobs/s",
                          flush=True)  # fmt: skip
                    if procs == 1 and (args.profile or not args.quick):
                        # one more drain under py-spy (not counted: sampling costs CPU)
                        with tempfile.TemporaryDirectory() as tmp:
                            raw = Path(tmp) / "drain.raw"
                            d = drain(url, n, workers, raw)
                            if raw.exists():
                                out["profile_1p"] = {"jobs_per_s_while_sampled": d["jobs_per_s"],
                                                     **profile_summary(raw)}  # fmt: skip
                                _print_profile(out["profile_1p"])
                finally:
                    for w in workers:
                        w.stop()
        if args.only in (None, "pgqueuer"):
            with peers.sibling_database(url, "pgq") as pgq:
                peers.pgqueuer_install(pgq)
                out["pgqueuer_version"] = peers.pgqueuer_version()
                best = 0.0
                for consumers, batch in ((5, 10), (1, 100), (5, 100)):
                    rate = peers.pgqueuer_drain(pgq, n, consumers=consumers, batch=batch)
                    out[f"pgqueuer_drain_{consumers}x{batch}"] = rate
                    best = max(best, rate)
                    rows.append([f"PgQueuer drain ({consumers} consumers, batch {batch})", rate])
                    print(f"  PgQueuer {consumers}x{batch}: {rate:,.0f} jobs/s", flush=True)
                out["pgqueuer_best"] = best
        if args.only in (None, "floor"):
            with peers.sibling_database(url, "floor") as fl:
                floor.setup(fl)
                rate = floor.drain(fl, n)
            out["floor_drain"] = rate
            rows.append(["raw floor drain (batch 100)", rate])
    print(table(f"throughput, no-op handler ({n} jobs), jobs/s", ["case", "jobs/s"], rows))
    ok = True
    if "ai_drain_1p" in out:
        one = out["ai_drain_1p"]["jobs_per_s"]
        two = out["ai_drain_2p"]["jobs_per_s"]
        out["scale_2p"] = two / one
        checks = {"one process >= 11,000 jobs/s": one >= TARGET_ONE,
                  "two processes >= 1.6x one": two / one >= TARGET_SCALE}  # fmt: skip
        if "pgqueuer_best" in out:
            out["vs_pgqueuer"] = one / out["pgqueuer_best"]
            checks["one process >= PgQueuer's best"] = out["vs_pgqueuer"] >= 1.0
        if "floor_drain" in out:
            out["vs_floor"] = one / out["floor_drain"]
        for name, passed in checks.items():
            print(f"target {name}: {'PASS' if passed else 'FAIL'}")
        out["targets"] = checks
        ok = all(checks.values())
        print(
            f"2 processes / 1: {two / one:.2f}x; 1 process vs PgQueuer best: "
            f"{out.get('vs_pgqueuer', float('nan')):.2f}x; vs raw floor: "
            f"{out.get('vs_floor', float('nan')):.2f}x"
        )
    name = "throughput_quick" if args.quick else "throughput"
    path = write_result(name, out)
    print(f"wrote {path}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
