"""The raw floor: a bare psycopg LISTEN → SKIP LOCKED claim loop on a minimal table with the
same kind of statement-level NOTIFY trigger. Nothing can pick up or drain faster on this
machine and server, so ai-service's figures are reported as a ratio to it.

Run alone: ``python -m bench.floor [--quick]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from multiprocessing.connection import Connection
from typing import Any

import psycopg

from bench.common import XID, bench_database, commit_times, summary, table, write_result

SCHEMA = b"""
CREATE TABLE floor_jobs (
    id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'pending',
    profile text NOT NULL, t0 float8 NOT NULL, payload jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX floor_jobs_claim ON floor_jobs (profile, id) WHERE status = 'pending';
CREATE FUNCTION floor_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE p text;
BEGIN
  FOR p IN SELECT DISTINCT profile FROM ins LOOP PERFORM pg_notify('floor:' || p, ''); END LOOP;
  RETURN NULL;
END $$;
CREATE TRIGGER floor_notify AFTER INSERT ON floor_jobs REFERENCING NEW TABLE AS ins
  FOR EACH STATEMENT EXECUTE FUNCTION floor_notify();
"""
CLAIM = b"""
UPDATE floor_jobs SET status = 'running' WHERE id IN (
  SELECT id FROM floor_jobs WHERE status = 'pending' AND profile = 'p'
  ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, t0
"""
DONE = b"UPDATE floor_jobs SET status = 'done' WHERE id = ANY(%s)"


def _consumer(url: str, expected: int, batch: int, out: Connection) -> None:
    latencies: list[float] = []
    claimed: dict[int, float] = {}  # job id -> wall clock at the claim (against commit times)
    done = 0
    with (
        psycopg.connect(url, autocommit=True) as listen,
        psycopg.connect(url, autocommit=True) as work,
    ):
        listen.execute(b'LISTEN "floor:p"')
        out.send("ready")
        first = None

        def drain() -> None:
            nonlocal done, first
            while True:
                rows = work.execute(CLAIM, (batch,)).fetchall()
                if not rows:
                    return
                now, wall = time.monotonic(), time.time()
                first = first or now
                # t0 < 0: a background job (pickup under load), not measured nor counted
                latencies.extend((now - t0) * 1000 for _, t0 in rows if t0 >= 0)
                claimed.update((i, wall) for i, t0 in rows if t0 > 0)
                work.execute(DONE, ([r[0] for r in rows],))
                done += sum(1 for _, t0 in rows if t0 >= 0)

        drain()  # catch-up, as after any (re)connect
        while done < expected:
            for _ in listen.notifies(timeout=1.0, stop_after=1):
                break
            drain()
        out.send((latencies, (time.monotonic() - (first or time.monotonic())), claimed))


def _start_consumer(url: str, expected: int, batch: int) -> tuple[Any, Connection]:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_consumer, args=(url, expected, batch, child))
    proc.start()
    assert parent.recv() == "ready"
    return proc, parent


def pickup(
    url: str, n: int, spacing_s: float, *, batch: int = 1, background_rate: float = 0
) -> dict[str, Any]:
    """One job at a time, ``spacing_s`` apart, to an idle consumer; ms from just before the
    INSERT is sent to the claim, and (``from_commit``, when the server keeps commit timestamps)
    from the INSERT's commit to the claim.

    With ``background_rate``, another process inserts that many jobs/s meanwhile (not counted).
    """
    from bench.peers import Background

    proc, pipe = _start_consumer(url, n, batch)
    bg = Background(url, "floor", background_rate) if background_rate else None
    xids: dict[int, str] = {}
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(n):
                time.sleep(spacing_s)
                row = conn.execute(
                    b"INSERT INTO floor_jobs (profile, t0) VALUES ('p', %s) RETURNING id, " + XID,
                    (time.monotonic(),),
                ).fetchone()
                assert row is not None
                xids[row[0]] = row[1]
        latencies, _, claimed = pipe.recv()
    finally:
        if bg is not None:
            bg.stop()
    proc.join()
    ids = [i for i in xids if i in claimed]
    committed = commit_times(url, [xids[i] for i in ids])
    from_commit = (
        summary([(claimed[i] - c) * 1000 for i, c in zip(ids, committed, strict=True)])
        if committed is not None
        else None
    )
    return {**summary(latencies), "from_commit": from_commit}


def drain(url: str, n: int, batch: int = 100) -> float:
    """Jobs/s for one consumer draining ``n`` pre-inserted jobs (claim + complete per batch)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            b"INSERT INTO floor_jobs (profile, t0, payload) "
            b"SELECT 'p', 0, '{}' FROM generate_series(1, %s)",
            (n,),
        )
        conn.execute(b"ANALYZE floor_jobs")
    proc, pipe = _start_consumer(url, n, batch)
    _, elapsed, _ = pipe.recv()
    proc.join()
    return n / elapsed if elapsed else float("nan")


def setup(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(b"DROP TABLE IF EXISTS floor_jobs; DROP FUNCTION IF EXISTS floor_notify")
        conn.execute(SCHEMA)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    # bench.pickup and bench.throughput measure the floor again in their own runs (the
    # figures they compare with); this standalone run is the reference, kept short
    n = 50 if args.quick else 500
    jobs = 10_000 if args.quick else 50_000
    with bench_database(migrated=False, commit_timestamps=True) as url:
        setup(url)
        p50ms = pickup(url, n, 0.05)
        p5ms = pickup(url, n, 0.005)
        rate = drain(url, jobs)
    rows = [
        [case, (r["from_commit"] or {}).get("p50", "-"), r["p50"], r["p99"], r["max"]]
        for case, r in (("pickup, 50 ms spacing", p50ms), ("pickup, 5 ms spacing", p5ms))
    ]
    print(table("raw floor (ms)", ["case", "commit p50", "send p50", "send p99", "send max"], rows))
    print(f"raw floor drain: {rate:,.0f} jobs/s ({jobs} jobs)")
    write_result("floor", {"pickup_50ms": p50ms, "pickup_5ms": p5ms, "drain_jobs_per_s": rate})


if __name__ == "__main__":
    main()
