"""The client against a real HTTP server that misbehaves on purpose: 503s and dropped
connections during a rollout, long-polls answered early, redirects and foreign answers, and
the inputs a caller gets wrong (a token read from a file with its newline, a single filter
value given as a string, an empty filter list, a job id that is not one)."""

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
from service.client import ApiError, AsyncClient, Client
from service.client.calls import Call, Calls, request_kwargs
from service.client.policy import LONG_POLL_CHUNK, WaitLoop
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
        self.requests.append({"method": scope["method"], "path": scope["path"],
                              "query": scope["query_string"].decode(),
                              "authorization": headers.get("authorization")})  # fmt: skip
        status, body, extra = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        payload = body if isinstance(body, bytes) else msgspec.json.encode(body)
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
    loop = WaitLoop(timeout=None, now=0.0)
    asked = loop.ask(0.0)
    assert loop.answered(PENDING, asked, took=0.01, now=0.01) == 1.0  # answered early: pause
    assert loop.answered(PENDING, asked, took=asked, now=asked) == 0.0  # the poll ran out
    assert loop.answered(DONE, asked, took=0.01, now=0.01) is None
    timed = WaitLoop(timeout=2.0, now=0.0)
    assert timed.answered(PENDING, timed.ask(0.0), took=2.0, now=2.0) is None  # time is up
    early = WaitLoop(timeout=30.0, now=0.0)  # the last poll, answered early: time is left
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
    call = Call("GET", "/x", Job, read_timeout=30.0)
    timeout = request_kwargs(call, httpx.Timeout(1.0))["timeout"]
    assert (timeout.read, timeout.pool) == (31.0, 31.0)


def test_api_errors_survive_pickling() -> None:
    exc = ApiError(409, ErrorBody(error="conflict", detail="held", status="running"), 2.0)
    back = pickle.loads(pickle.dumps(exc))
    assert (back.status_code, back.code, back.detail, back.status, back.retry_after) == (
        409, "conflict", "held", "running", 2.0
    )  # fmt: skip


class Counting(httpx.AsyncHTTPTransport):
    """A real transport that counts the requests it was asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return await super().handle_async_request(request)


async def test_reads_and_keyed_creates_are_retried_after_503s_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    later = error(503, "database_unavailable", **{"Retry-After": "0"})
    caplog.set_level("INFO", logger="ai_service.client")
    async with served(Script(later, job(DONE))) as url, AsyncClient(url) as ac:
        assert (await ac.get(DONE.id)).status == "completed"
    said = [r.getMessage() for r in caplog.records if r.name == "ai_service.client"]
    assert said == [f"GET /api/v1/jobs/{DONE.id}: HTTP 503, sending it again in 0.00 s "
                    "(1 more at most)"]  # fmt: skip
    async with served(app := Script(later, job(DONE))) as url, AsyncClient(url) as ac:
        await ac.create("svc", "llm_chat", "qwen2.5-14b", {"user": "x"}, idempotency_key="k-1")
    assert [r["method"] for r in app.requests] == ["POST", "POST"]
    for send in (
        lambda ac: ac.create("svc", "llm_chat", "qwen2.5-14b", {"user": "x"}),  # no key
        lambda ac: ac.cancel(DONE.id),
        lambda ac: ac.complete(DONE.id, "w-1", {"ok": True}),
        lambda ac: ac.claim("w-1", "qwen2.5-14b"),
    ):
        async with served(app := Script(later, job(DONE))) as url, AsyncClient(url) as ac:
            with pytest.raises(ApiError) as err:
                await send(ac)
        assert err.value.status_code == 503 and len(app.requests) == 1
    async with served(app := Script(later, job(DONE))) as url:
        async with AsyncClient(url, retries=0) as ac:
            with pytest.raises(ApiError):
                await ac.get(DONE.id)
        with Client(url) as c:  # the blocking client follows the same rules
            assert (await anyio.to_thread.run_sync(lambda: c.get(DONE.id))).id == DONE.id


async def test_a_long_retry_after_is_left_to_the_caller() -> None:
    app = Script(error(503, "database_unavailable", **{"Retry-After": "120"}), job(DONE))
    async with served(app) as url, AsyncClient(url) as ac:
        with pytest.raises(ApiError) as err:
            await ac.get(DONE.id)
    assert err.value.retry_after == 120.0 and len(app.requests) == 1


async def test_a_request_that_never_reached_the_server_is_sent_again_whatever_it_is() -> None:
    async with served(Script(job(DONE))) as url:
        pass  # the server is gone: its port refuses connections
    transport = Counting()
    async with AsyncClient(url, retries=2, transport=transport) as ac:
        with pytest.raises(httpx.ConnectError):
            await ac.claim("w-1", "qwen2.5-14b")
    assert transport.sent == 3


async def test_redirects_and_foreign_answers_are_api_errors() -> None:
    moved = (308, b"", {"Location": "https://ai.example.com/api/v1/jobs/x"})
    async with served(app := Script(moved)) as url, AsyncClient(url) as ac:
        with pytest.raises(ApiError) as err:
            await ac.get(DONE.id)
    assert err.value.code == "redirect" and "https://ai.example.com" in err.value.detail
    assert len(app.requests) == 1
    for body in (b"<html>welcome to nginx</html>", b'{"hello": "world"}'):
        async with served(Script((200, body, {}))) as url, AsyncClient(url) as ac:
            with pytest.raises(ApiError) as err:
                await ac.get(DONE.id)
        assert err.value.code == "invalid_response" and "base_url" in err.value.detail


async def test_a_server_echoing_the_request_does_not_put_the_token_in_the_error() -> None:
    """A debug proxy or an echo endpoint (a wrong base_url) answers with what it was sent:
    the error's detail — logged, pickled to other processes — quoted the bearer token."""
    token = "tok-SUPER/SECRET+1234"
    echoes = [
        b"400 Bad Request\nauthorization: Bearer " + token.encode(),  # plain text
        b"<pre>Authorization: Bearer " + token.encode() + b"</pre>",  # a proxy's page
        msgspec.json.encode({"error": "echo", "detail": f"you sent Bearer {token}"}),
        b"GET /api/v1/stats?auth=tok-SUPER%2FSECRET%2B1234",
    ]
    for echo in echoes:
        async with served(Script((400, echo, {}))) as url, AsyncClient(url, token=token) as ac:
            with pytest.raises(ApiError) as err:
                await ac.stats()
        text = f"{err.value} {err.value.detail} {pickle.loads(pickle.dumps(err.value))}"
        assert "SECRET" not in text, (echo, text)
        assert "**********" in err.value.detail
    echo = httpx.MockTransport(
        lambda request: httpx.Response(502, text=f"echo: {request.headers['authorization']}")
    )
    with Client("http://127.0.0.1:1", token=token, transport=echo) as sync, pytest.raises(
        ApiError
    ) as err:  # fmt: skip
        sync.stats()
    assert "SECRET" not in str(err.value) and err.value.code == "http_error"


async def test_empty_filters_and_bad_job_ids_are_refused_before_sending() -> None:
    app = Script(job(DONE))
    async with served(app) as url, AsyncClient(url) as ac:
        for empty in ({"ids": []}, {"status": ()}, {"task_type": []}):
            with pytest.raises(ValueError, match="must not be empty"):
                [j async for j in ac.list(**empty)]
            with pytest.raises(ValueError, match="must not be empty"):
                await ac.cancel_where(**empty)
        for bad in ("../stats", "", "42"):
            with pytest.raises(ValueError, match="job_id must be a UUID"):
                await ac.get(bad)
            with pytest.raises(ValueError, match="job_id must be a UUID"):
                await ac.complete(bad, "w-1")
        assert (await ac.get(str(DONE.id).upper())).id == DONE.id  # any UUID spelling
    assert len(app.requests) == 1
    for nothing in (0, -1.0):  # httpx would give up at once, as "a connection error"
        with pytest.raises(ValueError, match="timeout must be more than 0"):
            AsyncClient(url, timeout=nothing)
        with pytest.raises(ValueError, match="timeout must be more than 0"):
            Client(url, timeout=nothing)
    with pytest.raises(ValueError, match="long_polls must be at least 1"):
        Client(url, long_polls=0)


async def test_list_with_a_limit_asks_for_no_more_than_it_returns() -> None:
    page = {"items": [DONE] * 5, "next_cursor": "more"}
    async with served(app := Script((200, page, {}))) as url, AsyncClient(url) as ac:
        got = [j async for j in ac.list(limit=5)]
        assert len(got) == 5 and len(app.requests) == 1
        assert parse_qs(app.requests[0]["query"])["limit"] == ["5"]
        assert [j async for j in ac.list(limit=0)] == [] and len(app.requests) == 1
        got = [j async for j in ac.list(limit=7, page_size=5)]  # 5, then the 2 left
    assert len(got) == 7 and parse_qs(app.requests[-1]["query"])["limit"] == ["2"]


def test_waits_interrupted_together_do_not_come_back_together() -> None:
    lost = httpx.ConnectError("connection refused")
    pauses = {WaitLoop(timeout=None, now=0.0).failed(lost, now=0.0) for _ in range(50)}
    assert len(pauses) > 1 and all(p is not None and 0.25 <= p <= 0.5 for p in pauses), pauses


async def test_wait_does_not_ride_out_a_misconfiguration() -> None:
    async with AsyncClient("ftp://127.0.0.1:1") as ac:
        with anyio.fail_after(60):  # riding it out would take 5 minutes
            with pytest.raises(httpx.UnsupportedProtocol):
                await ac.wait(DONE.id)


def test_long_polls_stay_under_common_proxy_idle_timeouts() -> None:
    loop = WaitLoop(timeout=None, now=0.0)
    assert loop.ask(0.0) == LONG_POLL_CHUNK < 60.0
    assert WaitLoop(timeout=20.0, now=0.0).ask(0.0) == 20.0
    # a claim cut by a proxy would leave the jobs it leased to wait out their leases
    claim = Calls.claim("w-1", "qwen2.5-14b", 4, None, wait_seconds=60.0)
    assert claim.body["wait_seconds"] == LONG_POLL_CHUNK and claim.read_timeout == LONG_POLL_CHUNK
    assert Calls.claim("w-1", "qwen2.5-14b", 4, None, wait_seconds=5.0).body["wait_seconds"] == 5.0
