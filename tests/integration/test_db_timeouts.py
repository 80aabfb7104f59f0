"""Every connection bounds its waits: pooled sessions carry the statement and idle-in-
transaction timeouts, the URL's own parameters win, and a statement cut short is a
``DatabaseUnavailable`` (which the worker retries and the API answers with 503)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from service.db import Database, DatabaseUnavailable, open_database
from service.db.listen import ListenConnection
from service.db.params import NETWORK_DEFAULTS, connect_params


async def rows(db: Database, query: str) -> list[dict[str, object]]:
    async with db.session() as s:  # (errors inside a session are translated)
        cur = await s._conn.execute(query)
        return await cur.fetchall()


async def show(db_url: str, statement_timeout: float | None) -> tuple[str, str]:
    db = await open_database(db_url, max_size=1, statement_timeout=statement_timeout)
    try:
        got = await rows(
            db,
            "SELECT current_setting('statement_timeout') AS s, "
            "current_setting('idle_in_transaction_session_timeout') AS i",
        )
    finally:
        await db.close()
    return str(got[0]["s"]), str(got[0]["i"])


async def test_pooled_sessions_carry_the_timeouts(db_url: str) -> None:
    assert await show(db_url, 60) == ("1min", "1min")
    assert await show(db_url, 0.25) == ("250ms", "250ms")
    assert await show(db_url, 0) == ("0", "0")
    own = make_conninfo(db_url, options="-c statement_timeout=7s")
    assert await show(own, 60) == ("7s", "1min")


async def test_a_statement_over_the_timeout_is_database_unavailable(db_url: str) -> None:
    db = await open_database(db_url, max_size=1, statement_timeout=0.2)
    try:
        with pytest.raises(DatabaseUnavailable, match="statement timeout"):
            await rows(db, "SELECT pg_sleep(30)")
        assert (await rows(db, "SELECT 1 AS one"))[0]["one"] == 1  # the pool recovered
    finally:
        await db.close()


async def test_listen_and_plain_connections_get_the_network_bounds(db_url: str) -> None:
    listen = await ListenConnection.connect(db_url)
    try:
        params = listen._conn.info.get_parameters()
    finally:
        await listen.close()
    for key, value in NETWORK_DEFAULTS.items():
        assert params.get(key) == str(value), (key, params)
    with psycopg.connect(db_url, **connect_params(db_url)) as conn:
        assert conn.info.get_parameters()["tcp_user_timeout"] == "30000"


def test_url_parameters_win() -> None:
    url = "postgresql://u@db.example/app?connect_timeout=3&options=-c%20search_path%3Dx"
    params = connect_params(url, statement_timeout=60)
    assert "connect_timeout" not in params
    assert params["keepalives_idle"] == 10
    assert params["options"] == (
        "-c statement_timeout=60000 -c idle_in_transaction_session_timeout=60000 -c search_path=x"
    )
    assert "options" not in connect_params(url)  # no statement timeout asked: options kept
