"""PgQueuer (from PyPI, bench extra only; psycopg driver) measured on the same PostgreSQL, in a
database of its own, and a background producer shared by the pickup benchmarks.

Pickup: the consumer is one ``QueueManager`` on an autocommit ``AsyncConnection`` with a no-op
entrypoint that records ``time.monotonic() - t0`` (t0 travels in the payload, read just before
the enqueue is sent, as in ``bench.floor``). Drain: ``tools/benchmark.py``-style — several
``QueueManager`` consumers in one process (5 by default, batch size 10), jobs pre-enqueued, the
rate counted from the first to the last job handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import struct
import time
from collections.abc import Iterator
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import psycopg

ENTRYPOINT = "bench_noop"
BACKGROUND = b"bg"


@contextlib.contextmanager
def sibling_database(url: str, suffix: str) -> Iterator[str]:
    """Another database on the same server as ``url`` (dropped afterwards)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = f"{info.get('dbname', 'bench')}_{suffix}"
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield psycopg.conninfo.make_conninfo(url, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def pgqueuer_version() -> str:
    import pgqueuer

    return str(getattr(pgqueuer, "__version__", "?"))


def pgqueuer_install(url: str) -> None:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    async def install() -> None:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with conn:
            await Queries(PsycopgDriver(conn)).install()

    asyncio.run(install())


# --- pickup -------------------------------------------------------------------------------------
def _pickup_consumer(url: str, pipe: Connection) -> None:
    """Serves rounds: ("round", n) -> "go"; after n measured jobs sends their latencies;
    ("stop",) ends it."""
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    async def run() -> None:
        latencies: list[float] = []
        expected = 0
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with conn:
            qm = QueueManager(Queries(PsycopgDriver(conn)))

            @qm.entrypoint(ENTRYPOINT)
            async def noop(job: Job) -> None:
                nonlocal latencies
                now = time.monotonic()
                if job.payload and job.payload != BACKGROUND:
                    latencies.append((now - struct.unpack("d", job.payload)[0]) * 1000)
                    if len(latencies) == expected:
                        pipe.send(latencies)
                        latencies = []

            async def control() -> None:
                nonlocal expected
                await asyncio.sleep(0.5)  # installed its LISTEN and the first dequeue
                loop = asyncio.get_running_loop()
                pipe.send("ready")
                while True:
                    msg = await loop.run_in_executor(None, pipe.recv)
                    if msg[0] == "stop":
                        qm.shutdown.set()
                        return
                    expected = msg[1]
                    pipe.send("go")

            task = asyncio.create_task(control())
            await qm.run(dequeue_timeout=timedelta(seconds=30), batch_size=10)
            await task

    asyncio.run(run())


class PgQueuerConsumer:
    """One idle PgQueuer consumer process (``QueueManager``, psycopg driver, batch size 10)
    that serves several pickup rounds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pipe, child = mp.Pipe()
        self._proc = mp.get_context("spawn").Process(target=_pickup_consumer, args=(url, child))
        self._proc.start()
        assert self._pipe.recv() == "ready"

    def pickup(
        self, n: int, spacing_s: float, *, warmup: int = 10, background_rate: float = 0
    ) -> dict[str, Any]:
        """Sequential jobs ``spacing_s`` apart; ms from just before the enqueue to the handler."""
        from pgqueuer.db import SyncPsycopgDriver
        from pgqueuer.queries import SyncQueries

        from bench.common import summary

        self._pipe.send(("round", n + warmup))
        assert self._pipe.recv() == "go"
        bg = Background(self.url, "pgqueuer", background_rate) if background_rate else None
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                q = SyncQueries(SyncPsycopgDriver(conn))
                for _ in range(n + warmup):
                    time.sleep(spacing_s)
                    q.enqueue(ENTRYPOINT, struct.pack("d", time.monotonic()), 0)
            latencies = self._pipe.recv()
        finally:
            if bg is not None:
                bg.stop()
        return summary(latencies[warmup:])

    def stop(self) -> None:
        self._pipe.send(("stop",))
        self._proc.join(3)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


# --- drain --------------------------------------------------------------------------------------
def _drain_consumer(url: str, n: int, consumers: int, batch: int, out: Connection) -> None:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    async def run() -> None:
        done = 0
        first: float | None = None
        last = 0.0
        managers: list[QueueManager] = []
        conns = [
            await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(consumers)
        ]
        for conn in conns:
            qm = QueueManager(Queries(PsycopgDriver(conn)))

            @qm.entrypoint(ENTRYPOINT)
            async def noop(job: Job) -> None:
                nonlocal done, first, last
                first = first or time.monotonic()
                done += 1
                if done == n:
                    finished.set()

            managers.append(qm)

        async def stored() -> None:
            # The same end point as ai-service's: every completion committed (PgQueuer moves a
            # finished job from its queue table to its log in buffered batches).
            nonlocal last
            await finished.wait()
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                while True:
                    cur = await conn.execute(b"SELECT count(*) FROM pgqueuer")
                    row = await cur.fetchone()
                    if row is not None and row[0] == 0:
                        break
                    await asyncio.sleep(0.002)
            last = time.monotonic()
            for m in managers:
                m.shutdown.set()

        finished = asyncio.Event()
        await asyncio.gather(
            stored(),
            *(m.run(dequeue_timeout=timedelta(seconds=5), batch_size=batch) for m in managers),
        )
        for conn in conns:
            await conn.close()
        out.send((done, last - (first or last)))

    asyncio.run(run())


def pgqueuer_drain(url: str, n: int, *, consumers: int = 5, batch: int = 10) -> float:
    """Jobs/s for PgQueuer draining ``n`` pre-enqueued no-op jobs."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(b"TRUNCATE pgqueuer, pgqueuer_log")
        conn.execute(
            b"INSERT INTO pgqueuer (priority, entrypoint, payload, status) "
            b"SELECT 0, %s, NULL, 'queued' FROM generate_series(1, %s)",
            (ENTRYPOINT, n),
        )
        conn.execute(b"ANALYZE pgqueuer")
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(
        target=_drain_consumer, args=(url, n, consumers, batch, child)
    )
    proc.start()
    done, elapsed = parent.recv()
    proc.join(30)
    return float(done / elapsed) if elapsed else float("nan")


# --- a background producer (500 jobs/s) for the pickup-under-load cases ---------------------
BACKGROUND_SQL = {
    "ai-service": b"INSERT INTO ai_jobs (id, owner_service, task_type, model_profile) "
    b"SELECT gen_random_uuid(), 'bench', %(task)s, %(profile)s FROM generate_series(1, %(n)s)",
    "floor": b"INSERT INTO floor_jobs (profile, t0) SELECT 'p', -1 FROM generate_series(1, %(n)s)",
    "pgqueuer": b"INSERT INTO pgqueuer (priority, entrypoint, payload, status) "
    b"SELECT 0, %(task)s, 'bg'::bytea, 'queued' FROM generate_series(1, %(n)s)",
}
TICK = 0.01  # one INSERT of rate*TICK jobs every 10 ms


def _produce(url: str, kind: str, rate: float, params: dict[str, Any], stop: Any) -> None:
    per_tick = max(1, round(rate * TICK))
    sql = BACKGROUND_SQL[kind]
    with psycopg.connect(url, autocommit=True) as conn:
        nxt = time.monotonic()
        while not stop.is_set():
            conn.execute(sql, {**params, "n": per_tick})
            nxt += per_tick / rate
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)


class Background:
    """A separate process inserting ``rate`` jobs/s (in small batches) until ``stop()``."""

    def __init__(self, url: str, kind: str, rate: float, **params: Any) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        params = {"task": ENTRYPOINT, "profile": "", **params}
        self._proc = ctx.Process(target=_produce, args=(url, kind, rate, params, self._stop))
        self._proc.start()
        time.sleep(0.5)  # running at its rate before the first measured job

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(10)
