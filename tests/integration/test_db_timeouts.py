"""Every connection bounds its waits: pooled sessions carry the statement and idle-in-
transaction timeouts (SET per new connection, not startup options), the URL's and PGOPTIONS'
own settings win, and a statement cut short is a ``StatementTimeout`` (a
``DatabaseUnavailable``: the worker retries it; the API answers 503 naming the setting)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from service.config import Settings
from service.db import Database, StatementTimeout, open_database
from service.db.listen import ListenConnection
from service.db.params import NETWORK_DEFAULTS, SESSION_TIMEOUTS, connect_params, session_settings
from tests.integration.api_server import job_body, running_api


async def rows(db: Database, query: str) -> list[dict[str, object]]:
    async with db.session() as s:  # (errors inside a session are translated)
        cur = await s._conn.execute(query)
        return await cur.fetchall()


async def show(db_url: str, statement_timeout: float | None) -> tuple[str, str, str]:
    db = await open_database(db_url, max_size=1, statement_timeout=statement_timeout)
    try:
        got = await rows(
            db,
            "SELECT current_setting('statement_timeout') AS s, "
            "current_setting('idle_in_transaction_session_timeout') AS i, "
            "current_setting('jit') AS j",
        )
    finally:
        await db.close()
    return str(got[0]["s"]), str(got[0]["i"]), str(got[0]["j"])


async def test_pooled_sessions_carry_the_timeouts_and_no_jit(db_url: str) -> None:
    assert await show(db_url, 60) == ("1min", "1min", "off")
    assert await show(db_url, 0.25) == ("250ms", "250ms", "off")
    assert await show(db_url, 0) == ("0", "0", "off")
    own = make_conninfo(db_url, options="-c statement_timeout=7s -c jit=on")
    assert await show(own, 60) == ("7s", "1min", "on")


async def test_a_statement_over_the_timeout_is_database_unavailable(db_url: str) -> None:
    db = await open_database(db_url, max_size=1, statement_timeout=0.2)
    try:
        with pytest.raises(StatementTimeout, match="statement timeout"):
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


def test_url_parameters_and_pgoptions_win() -> None:
    url = "postgresql://u@db.example/app?connect_timeout=3&options=-c%20statement_timeout%3D5s"
    params = connect_params(url)
    assert "connect_timeout" not in params and "options" not in params  # (PgBouncer, PGOPTIONS)
    assert params["keepalives_idle"] == 10
    off = {"jit": "off", "TimeZone": "UTC"}
    assert session_settings(url, 60, env={}) == {
        "idle_in_transaction_session_timeout": "60000",
        **off,
    }
    plain = "postgresql://u@db.example/app"
    assert session_settings(plain, 0.25, env={}) == {
        **dict.fromkeys(SESSION_TIMEOUTS, "250"),
        **off,
    }
    pgoptions = {"PGOPTIONS": "-c idle_in_transaction_session_timeout=0 -c jit=on"}
    assert session_settings(plain, 60, env=pgoptions) == {
        "statement_timeout": "60000",
        "TimeZone": "UTC",
    }
    assert session_settings(plain, 0, env={}) == off
    assert session_settings(plain, 0, env={"PGOPTIONS": "-c jit_above_cost=10"}) == off
    assert session_settings(plain, 0, env={"PGOPTIONS": "-cjit=on"}) == {"TimeZone": "UTC"}
    assert session_settings(plain, 0, env={"PGOPTIONS": "-c jit=on -c TimeZone=Europe/Riga"}) == {}


async def test_the_api_names_the_statement_timeout(db_url: str) -> None:
    """A cancel by filter that cannot finish within DB_STATEMENT_TIMEOUT (here it waits on a
    row another session holds) is rolled back and answered 503 ``statement_timeout``."""
    settings = Settings(db_statement_timeout=2.0)
    async with running_api(db_url, settings) as api:
        r = await api.client.post("/api/v1/jobs", json=job_body(owner_service="held"))
        job_id = r.json()["id"]
        with psycopg.connect(db_url) as holder:  # a transaction: the row lock holds until its end
            holder.execute("SELECT 1 FROM ai_jobs WHERE id = %s FOR UPDATE", (job_id,))
            r = await api.client.post("/api/v1/jobs/cancel", json={"owner_service": "held"})
            holder.rollback()
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "statement_timeout"
        assert "DB_STATEMENT_TIMEOUT" in r.json()["detail"]
        assert (await api.client.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "pending"


async def test_times_are_answered_in_utc_whatever_the_servers_zone(db_url: str) -> None:
    """A database whose sessions default to a local zone (Debian's packages take the host's):
    the API rendered times in it (``2030-03-17T10:46:40-07:00``)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(f"ALTER DATABASE \"{name}\" SET TimeZone = 'America/Los_Angeles'".encode())
    with psycopg.connect(db_url) as conn:  # a new session takes the database's zone
        assert conn.execute("SHOW TimeZone").fetchone() == ("America/Los_Angeles",)
    async with running_api(db_url) as api:
        r = await api.client.post("/api/v1/jobs", json=job_body(run_after=1_900_000_000))
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["run_after"] == "2030-03-17T17:46:40Z"
        assert job["created_at"].endswith("Z")
        got = (await api.client.get(f"/api/v1/jobs/{job['id']}")).json()
        assert got["run_after"] == "2030-03-17T17:46:40Z"
