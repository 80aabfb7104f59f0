"""The client against a real HTTP server that misbehaves on purpose: 503s and dropped
connections during a rollout, long-polls answered early, and the inputs a caller gets wrong
(a token read from a file with its newline, a single filter value given as a string)."""

from __future__ import annotations

import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
import httpx
import msgspec
import pytest

from service.api.schemas import ErrorBody
from service.client import ApiError, AsyncClient, Client, _Call, _request_kwargs, _WaitLoop
from service.jobs import Job
from tests.helpers import lifespan, running_job, serve_asgi

DONE = running_job(status="completed", result={"ok": True})
PENDING = running_job(status="pending")


class Script:
    """An ASGI app answering GETs from a list of (status, body, headers); records requests."""

    def __init__(self, *answers: tuple[int, Any, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"path": scope["path"], "query": scope["query_string"].decode(),
                              "authorization": headers.get("authorization")})  # fmt: skip
        status, body, extra = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        payload = msgspec.json.encode(body)
        head = [(b"content-type", b"application/json")]
        head += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": payload})


def error(status: int, code: str, **headers: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": code, "detail": f"{code} (test)"}, headers


def job(j: Job) -> tuple[int, Any, dict[str, str]]:
    return 200, j, {}


@asynccontextmanager
async def served(app: Script) -> AsyncIterator[str]:
    async with serve_asgi(app) as url:
        yield url


async def test_wait_rides_out_503s_and_honours_retry_after() -> None:
    for sync in (False, True):
        app = Script(
            error(503, "database_unavailable", **{"Retry-After": "0"}),
            error(502, "bad_gateway"),
            job(DONE),
        )
        async with served(app) as url:
            if sync:
                with Client(url) as c:
                    got = await anyio.to_thread.run_sync(lambda: c.wait(DONE.id, timeout=60))
            else:
                async with AsyncClient(url) as ac:
                    got = await ac.wait(DONE.id, timeout=60)
        assert got.status == "completed" and len(app.requests) == 3


async def test_wait_raises_other_errors_at_once() -> None:
    app = Script(error(404, "not_found"), job(DONE))
    async with served(app) as url, AsyncClient(url) as ac:
        with pytest.raises(ApiError) as err:
            await ac.wait(DONE.id, timeout=60)
    assert err.value.status_code == 404 and len(app.requests) == 1


async def test_wait_rides_out_a_refused_connection_until_its_deadline() -> None:
    async with served(Script(job(DONE))) as url:
        pass  # the server is gone: its port refuses connections
    async with AsyncClient(url) as ac:
        with pytest.raises(httpx.TransportError):
            await ac.wait(DONE.id, timeout=0.5)


def test_wait_pauses_only_after_an_early_unfinished_answer() -> None:
    loop = _WaitLoop(timeout=None, now=0.0)
    asked = loop.ask(0.0)
    assert loop.answered(PENDING, asked, took=0.01, now=0.01) == 1.0  # answered early: pause
    assert loop.answered(PENDING, asked, took=asked, now=asked) == 0.0  # the poll ran out
    assert loop.answered(DONE, asked, took=0.01, now=0.01) is None
    timed = _WaitLoop(timeout=2.0, now=0.0)
    assert timed.answered(PENDING, timed.ask(0.0), took=2.0, now=2.0) is None  # time is up
    early = _WaitLoop(timeout=30.0, now=0.0)  # the last poll, answered early: time is left
    assert early.answered(PENDING, early.ask(0.0), took=0.01, now=0.01) == 1.0


async def test_token_is_stripped_and_a_bad_one_is_refused_without_quoting_it() -> None:
    app = Script(job(DONE))
    async with served(app) as url, AsyncClient(url, token="s3cr3t-token\n") as ac:
        await ac.get(DONE.id)
    assert app.requests[0]["authorization"] == "Bearer s3cr3t-token"
    for bad in ("s3cr3t token", "s3cr3t\ttoken", "s3cr3t-tökén"):
        with pytest.raises(ValueError, match="printable ASCII") as err:
            Client("http://127.0.0.1:1", token=bad)
        assert "s3cr3t" not in str(err.value)


async def test_a_filter_value_given_as_a_string_is_one_value() -> None:
    app = Script((200, {"items": [], "next_cursor": None}, {}))
    async with served(app) as url, AsyncClient(url) as ac:
        assert [j async for j in ac.list(task_type="call_analysis", status="failed")] == []
    query = parse_qs(app.requests[0]["query"])
    assert query["task_type"] == ["call_analysis"] and query["status"] == ["failed"]


def test_long_polls_may_wait_for_a_pooled_connection_as_long_as_they_hold_one() -> None:
    call = _Call("GET", "/x", Job, read_timeout=30.0)
    timeout = _request_kwargs(call, httpx.Timeout(1.0))["timeout"]
    assert (timeout.read, timeout.pool) == (31.0, 31.0)


def test_api_errors_survive_pickling() -> None:
    exc = ApiError(409, ErrorBody(error="conflict", detail="held", status="running"), 2.0)
    back = pickle.loads(pickle.dumps(exc))
    assert (back.status_code, back.code, back.detail, back.status, back.retry_after) == (
        409, "conflict", "held", "running", 2.0
    )  # fmt: skip
