"""``POST /api/v1/jobs/batch`` stays all or nothing when a concurrent request takes one of its
idempotency keys between the batch's check and its insert.

The race is forced, not hoped for: a second connection inserts the key in a transaction it
keeps open, so the batch's check cannot see it and its insert must wait for it; the test
waits until PostgreSQL reports the API's session blocked by that transaction, then commits.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from service.api.bodygate import LARGE_BYTES
from service.jobs import new_id
from tests.integration.api_server import Api, job_body, running_api

GENEROUS = 30  # seconds; bounds a hang, times nothing
OWNER = "telephony"
DEFAULTS = {"owner_service": OWNER, "task_type": "llm_chat", "model_profile": "qwen2.5-14b"}


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    async with running_api(db_url) as api:
        yield api


async def blocked_by(watcher: psycopg.AsyncConnection[Any], pid: int) -> bool:
    """Whether some session waits on a lock that session ``pid`` holds."""
    cur = await watcher.execute(
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)))",
        [pid],
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def insert_key(
    conn: psycopg.AsyncConnection[Any], key: str, body: dict[str, Any]
) -> uuid.UUID:
    """Insert a job holding ``key`` as another request would, in ``conn``'s transaction."""
    job_id = new_id()
    await conn.execute(
        "INSERT INTO ai_jobs (id, owner_service, task_type, model_profile, input, "
        "idempotency_key) VALUES (%s, %s, %s, %s, %s, %s)",
        [job_id, OWNER, DEFAULTS["task_type"], DEFAULTS["model_profile"], Jsonb(body), key],
    )
    return job_id


async def post_against(
    api: Api,
    db_url: str,
    keys: list[str],
    other: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
    then: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
) -> httpx.Response:
    """POST a batch of ``keys`` while another transaction ran ``other`` and holds its locks;
    once the batch waits on it, that transaction runs ``then`` and commits."""
    batch = {"defaults": {**DEFAULTS, "input": {"user": "hi"}},
             "jobs": [{"idempotency_key": k} for k in keys]}  # fmt: skip
    async with (
        await psycopg.AsyncConnection.connect(db_url) as holder,
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as watcher,
    ):
        await other(holder)  # not committed yet
        answer: list[httpx.Response] = []

        async def post() -> None:
            answer.append(await api.client.post("/api/v1/jobs/batch", json=batch))

        with anyio.fail_after(GENEROUS):
            async with anyio.create_task_group() as tg:
                tg.start_soon(post)
                while not await blocked_by(watcher, holder.info.backend_pid):  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # until the batch waits on it (an outcome)
                await then(holder)
                await holder.commit()
    return answer[0]


async def post_while_key_is_taken(
    api: Api, db_url: str, taken_input: dict[str, Any]
) -> tuple[httpx.Response, str]:
    """POST a batch of keys k1, k2, k2 while another transaction inserts k2 (with
    ``taken_input``); that transaction commits once the batch waits on it. Returns the
    response and the id of the concurrent request's job."""
    winner: list[uuid.UUID] = []

    async def take(conn: psycopg.AsyncConnection[Any]) -> None:
        winner.append(await insert_key(conn, "k2", taken_input))

    async def nothing(conn: psycopg.AsyncConnection[Any]) -> None:
        pass

    r = await post_against(api, db_url, ["k1", "k2", "k2"], take, nothing)
    return r, str(winner[0])


def stored_keys(db_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT idempotency_key, id::text FROM ai_jobs ORDER BY 1").fetchall()
    return [(k, i) for k, i in rows]


async def test_a_concurrent_same_body_is_an_idempotent_repeat(api: Api, db_url: str) -> None:
    r, winner = await post_while_key_is_taken(api, db_url, {"user": "hi"})
    assert r.status_code == 201, r.text  # k1 is new
    items = r.json()["items"]
    assert [i["created"] for i in items] == [True, False, False]
    assert items[1]["id"] == items[2]["id"] == winner
    assert stored_keys(db_url) == [("k1", items[0]["id"]), ("k2", winner)]


async def test_a_concurrent_different_body_refuses_the_whole_batch(api: Api, db_url: str) -> None:
    r, winner = await post_while_key_is_taken(api, db_url, {"user": "something else"})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["error"] == "idempotency_conflict"
    assert body["job_id"] == winner and winner in body["detail"]
    assert stored_keys(db_url) == [("k2", winner)]  # nothing of the batch was committed


async def test_batches_taking_the_same_keys_in_opposite_orders_do_not_deadlock(
    api: Api, db_url: str
) -> None:
    """Another request's transaction holds k1 and will take k2 next (key order, as a batch of
    this service now inserts). The batch lists k2 before k1: inserted in its own order it
    would hold k2 while waiting for k1, and the other transaction's k2 would then wait for it,
    a deadlock PostgreSQL breaks by aborting one of them (the batch got a 503)."""
    ids: dict[str, uuid.UUID] = {}

    def take(key: str) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            ids[key] = await insert_key(conn, key, {"user": "hi"})

        return run

    r = await post_against(api, db_url, ["k2", "k1"], take("k1"), take("k2"))
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [
        {"id": str(ids["k2"]), "created": False},
        {"id": str(ids["k1"]), "created": False},
    ]
    assert stored_keys(db_url) == [("k1", str(ids["k1"])), ("k2", str(ids["k2"]))]


async def test_large_batches_sent_together_all_land(api: Api) -> None:
    """Bodies over 1 MiB pass the gate (service/api/bodygate.py) in a real server: read there
    first, replayed to the app whole; five sent at once all complete, none lost or refused
    while waiting (the turns themselves: tests/unit/test_body_gate.py)."""
    pad = "x" * 480
    body = {"defaults": job_body(), "jobs": [{"owner_ref": f"r{i}-{pad}"} for i in range(3000)]}
    assert len(json.dumps(body)) > LARGE_BYTES  # each waits its turn
    answers: list[httpx.Response] = []

    async def send() -> None:
        answers.append(await api.client.post("/api/v1/jobs/batch", json=body))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(send)
    assert [r.status_code for r in answers] == [201] * 5, [r.text[:200] for r in answers]
    assert all(r.json()["created"] == 3000 for r in answers)
