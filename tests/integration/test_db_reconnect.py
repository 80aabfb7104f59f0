"""The pool's reconnection pace (``service/db/pool.py``): after a lost server it tries again
1 s, then 2 s, then every 2 s — not 4, 8, 16 … s, which kept workers failing for up to ~45 s
after a PostgreSQL restart. Driven through psycopg_pool's own reconnection code (real
connection attempts to a port nobody listens on), so an upgrade of psycopg-pool that stops
calling the hook shows here."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg_pool.pool_async import AddConnection

from service.db import DatabaseUnavailable, open_database
from service.db.pool import RECONNECT_MAX_DELAY, ReconnectingPool
from tests.helpers import free_port, wait_for


async def test_reconnection_attempts_keep_a_steady_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ReconnectingPool(
        f"host=127.0.0.1 port={free_port()} user=nobody connect_timeout=2", open=False
    )
    scheduled: list[tuple[Any, float]] = []

    async def schedule_task(task: Any, delay: float) -> None:  # instead of waiting that long
        scheduled.append((task, delay))

    monkeypatch.setattr(pool, "schedule_task", schedule_task)
    await AddConnection(pool)._run(pool)  # the task the pool runs when it needs a connection
    for _ in range(6):  # the server stays away: each retry is scheduled again
        task, _delay = scheduled[-1]
        assert isinstance(task, AddConnection)
        await task._run(pool)
    delays = [delay for _task, delay in scheduled]
    assert len(delays) == 7, delays
    assert 0.8 <= delays[0] <= 1.2, delays  # psycopg_pool's first pause (jittered)
    assert all(d <= RECONNECT_MAX_DELAY for d in delays), delays
    steady = delays[2:]  # 4, 8, 16, … without the cap
    assert all(d >= 0.9 * RECONNECT_MAX_DELAY for d in steady), delays


async def test_after_the_server_drops_every_connection_one_request_fails_not_one_each(
    db_url: str,
) -> None:
    """A restart or failover breaks every pooled connection, and each idle one used to fail
    one more request (an API 503, a failed claim) before the pool replaced it: up to
    DB_POOL_SIZE failures. The first broken one now has its idle siblings tested at once."""
    db = await open_database(db_url, max_size=4, min_size=4, timeout=10)
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    admin = psycopg.conninfo.make_conninfo(db_url, dbname="postgres")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            gone = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            wait_for(lambda: conn.execute(gone, [dbname]).fetchone() == (4,), what="4 open")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [dbname],
            )
            wait_for(lambda: conn.execute(gone, [dbname]).fetchone() == (0,), what="kills")
        failures = 0
        for _ in range(4):
            try:
                await db.fetch("stats_by_kind")
            except DatabaseUnavailable:
                failures += 1
        assert failures == 1
    finally:
        await db.close()
