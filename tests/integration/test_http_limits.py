"""The API's HTTP server bounds a request's head: its size (431) and the time it may take to
arrive (408, or a plain close for a connection that never sent anything). Raw sockets against
a real server (uvicorn, the app, PostgreSQL), since clients like httpx would not send such
requests. The worker's port uses the same protocol class."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import SocketStream

from service.http_limits import MAX_HEAD_BYTES, READ_SLACK, BoundedHttpToolsProtocol
from service.logs import setup_logging
from service.serve import make_server
from service.worker.http import make_worker_server
from service.worker.status import WorkerStatus
from tests.integration.api_server import Api, running_api
from tests.integration.test_worker_runtime import until


@pytest.fixture
async def api(db_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    # A short deadline so the test does not idle for 30 s; the tests wait for the server to
    # act (a generous bound below only stops a hang), they do not time it.
    monkeypatch.setattr(BoundedHttpToolsProtocol, "head_timeout_s", 1.0)
    monkeypatch.setattr(BoundedHttpToolsProtocol, "body_timeout_s", 1.0)
    async with running_api(db_url) as api:
        yield api


async def connect(api: Api) -> SocketStream:
    host, port = api.url.removeprefix("http://").split(":")
    return await anyio.connect_tcp(host, int(port))


async def read_all(stream: SocketStream) -> bytes:
    """Everything until the server closes the connection."""
    out = b""
    with anyio.fail_after(60):
        while True:
            try:
                out += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return out


def answer(raw: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    return int(head.split(b" ")[1]), json.loads(body)


async def test_a_head_over_the_limit_is_431_and_the_server_goes_on(api: Api) -> None:
    stream = await connect(api)
    big = b"x" * (MAX_HEAD_BYTES + 1)
    await stream.send(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: " + big + b"\r\n\r\n")
    status, body = answer(await read_all(stream))
    assert status == 431
    assert body["error"] == "request_header_fields_too_large"
    assert str(MAX_HEAD_BYTES) in body["detail"]
    # many headers adding up count too, and a head just under the limit is served
    stream = await connect(api)
    many = b"".join(b"x-h%d: %s\r\n" % (i, b"y" * 1000) for i in range(70))
    await stream.send(b"GET /healthz HTTP/1.1\r\nhost: t\r\n" + many + b"\r\n")
    assert answer(await read_all(stream))[0] == 431
    fits = b"x" * (MAX_HEAD_BYTES - 200)
    r = await api.client.get("/healthz", headers={"x-fits": fits.decode()})
    assert r.status_code == 200


async def test_one_header_never_ended_is_431_once_it_outgrows_the_bound(api: Api) -> None:
    """httptools gathers one header's bytes itself before the protocol sees it: a header that
    never ends is cut off by the bytes received, not buffered until the deadline."""
    stream = await connect(api)
    start = b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: "
    # Just past the bound, and no more: bytes the server never reads would make its close a
    # reset, which discards the answer on the way.
    await stream.send(start + b"x" * (MAX_HEAD_BYTES + READ_SLACK + 16 - len(start)))
    raw = await read_all(stream)
    assert answer(raw)[0] == 431, raw[:200]


async def test_a_trailer_that_never_ends_closes_the_connection(api: Api) -> None:
    """A chunked body's trailers are gathered like headers, after the head was counted: bytes
    that are not body are bounded as well (no answer fits: the request is still unread)."""
    stream = await connect(api)
    head = b"POST /api/v1/jobs HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
    chunked = b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nx-trailer: "
    # the bound, plus one read of slack: the read that brought the body may hold trailer bytes
    trailer = b"x" * (MAX_HEAD_BYTES + 2 * READ_SLACK + 16)
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await stream.send(head + chunked + trailer)  # the server may close while we send
    assert b"HTTP/1.1" not in await read_all(stream)  # closed (or reset), never answered
    assert (await api.client.get("/healthz")).status_code == 200


async def test_a_request_that_is_not_http_gets_the_error_shape_and_a_json_log_line(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvicorn answered such requests in plain text, and logged them through handlers of its
    own that it installed when a server was made, so the service's JSON log stream got a
    "WARNING:  Invalid HTTP request received." line. Logging set up as a service process
    does it (before its servers are made); every line on stderr must be a JSON object."""
    touched = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error", "uvicorn.access",
                                              "httpx", "psycopg.pool")]  # fmt: skip
    saved = [(lg, lg.handlers[:], lg.filters[:], lg.level, lg.propagate) for lg in touched]
    setup_logging("info", "json")
    try:
        async with running_api(db_url) as api:
            for raw in (b"FOO /healthz HTTP/1.1\r\nhost: t\r\n\r\n",
                        b"POST /api/v1/jobs HTTP/1.1\r\nhost: t\r\ncontent-length: -5\r\n\r\n",
                        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):  # fmt: skip
                stream = await connect(api)
                await stream.send(raw)
                status, body = answer(await read_all(stream))
                assert (status, body["error"]) == (400, "bad_request"), raw
            assert (await api.client.get("/healthz")).status_code == 200
    finally:  # as it was: setup_logging is process-wide, and the tests go on
        for lg, handlers, filters, level, propagate in saved:
            lg.handlers[:], lg.filters[:] = handlers, filters
            lg.setLevel(level)
            lg.propagate = propagate
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    logged = [json.loads(line) for line in lines]  # (raises on a line that is not JSON)
    assert sum("Invalid HTTP request" in r["msg"] for r in logged) == 3, lines


async def test_a_head_that_never_completes_is_408_and_closed(api: Api) -> None:
    stream = await connect(api)
    await stream.send(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-slow: ")  # and nothing more
    status, body = answer(await read_all(stream))
    assert (status, body["error"]) == (408, "request_timeout")


SHORT_BODY = (
    b"POST /api/v1/jobs HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
    b'content-length: 1000\r\n\r\n{"a": 1'
)  # 7 bytes of the 1,000 declared


async def test_a_body_that_never_completes_is_408_and_no_server_error(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn has no body deadline: a request that declared more than it sent held its
    connection and its handler (waiting in receive()) for ever. The app, which was reading
    the body, hears a disconnect: a 499 line at INFO, not a 500."""
    caplog.set_level(logging.INFO, logger="ai_service.api")
    stream = await connect(api)
    await stream.send(SHORT_BODY)
    status, body = answer(await read_all(stream))
    assert (status, body["error"]) == (408, "request_timeout")
    assert "body did not arrive" in body["detail"]
    await until(lambda: "answered 499 client_closed_request" in caplog.text, what="the 499 line")
    assert "answered 500" not in caplog.text
    assert (await api.client.get("/healthz")).status_code == 200


MALFORMED_CHUNKS = {  # (a loop: parametrized coroutine tests with async fixtures do not run)
    "size-not-hex": b"zz\r\n\r\n",
    "shorter-than-its-size": b"5\r\n{}\r\n0\r\n\r\n",
    "negative-size": b"2\r\n{}\r\n-1\r\n\r\n",
}


async def test_a_malformed_chunked_body_is_400_bad_request(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection was closed without an answer: the parser refused the body while the app
    waited for it, which was taken for a pipelined request behind a response."""
    caplog.set_level(logging.INFO, logger="ai_service.api")
    head = (b"POST /api/v1/jobs HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
    for case, chunks in MALFORMED_CHUNKS.items():
        stream = await connect(api)
        await stream.send(head + chunks)
        got = await read_all(stream)
        assert got, case
        status, body = answer(got)
        assert (status, body["error"]) == (400, "bad_request"), case
    assert (await api.client.get("/api/v1/jobs")).json()["items"] == []  # nothing was created
    assert "answered 500" not in caplog.text  # (a chunked body's reader hears the client
    # leave and drops the request unanswered and unlogged: service/api/bodygate.py)


async def test_a_client_gone_mid_body_is_not_a_server_error(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ai_service.api")
    stream = await connect(api)
    await stream.send(SHORT_BODY)
    await stream.aclose()
    await until(lambda: "answered 499 client_closed_request" in caplog.text, what="the 499 line")
    assert "answered 500" not in caplog.text


async def test_a_connection_that_sends_nothing_is_closed(api: Api) -> None:
    stream = await connect(api)
    assert await read_all(stream) == b""  # closed by the server, without an answer
    stream = await connect(api)
    await stream.send(b"G")  # the first letter of a method: a request began
    assert answer(await read_all(stream))[0] == 408


async def test_stray_bytes_after_a_response_do_not_hold_the_connection(api: Api) -> None:
    """Any byte stops uvicorn's keep-alive timer, and a bare CRLF starts no request."""
    stream = await connect(api)
    await stream.send(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
    got = b""
    with anyio.fail_after(60):
        while not got.endswith(b'{"status":"ok"}'):
            got += await stream.receive()
    await stream.send(b"\r\n")
    assert await read_all(stream) == b""  # closed once the head's deadline passed


async def test_a_kept_alive_connection_still_serves_its_next_request(api: Api) -> None:
    """The deadline covers a head, not the time between requests (the keep-alive timeout's)
    nor a long request: a long-poll outlives it."""
    stream = await connect(api)
    get = b"GET /api/v1/jobs/%s?wait_seconds=2 HTTP/1.1\r\nhost: t\r\n\r\n"
    created = await api.client.post(
        "/api/v1/jobs",
        json={"owner_service": "t", "task_type": "x", "model_profile": "p", "input": {}},
    )
    job_id = created.json()["id"].encode()
    for _ in range(2):  # each waits its 2 s (the job stays pending), past the 1 s deadline
        await stream.send(get % job_id)
        with anyio.fail_after(60):
            got = b""
            while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                got += await stream.receive()
        assert got.startswith(b"HTTP/1.1 200"), got
    await stream.aclose()


async def test_a_request_pipelined_behind_a_long_poll_is_not_cut_off(api: Api) -> None:
    """No head is timed while a response is produced: the second request's head, incomplete
    until the 2 s long-poll (past the 1 s deadline) has been answered, is not cut off."""
    created = await api.client.post(
        "/api/v1/jobs",
        json={"owner_service": "t", "task_type": "x", "model_profile": "p", "input": {}},
    )
    job_id = created.json()["id"].encode()
    stream = await connect(api)
    poll = b"GET /api/v1/jobs/%s?wait_seconds=2 HTTP/1.1\r\nhost: t\r\n\r\n" % job_id
    await stream.send(poll + b"GET /healthz HTTP/1.1\r\nhost: t\r\n")  # not yet ended
    got = b""
    with anyio.fail_after(60):
        while not got.rstrip().endswith(b"}"):  # the long-poll's answer, a job
            got += await stream.receive()
        assert got.startswith(b"HTTP/1.1 200") and b"408" not in got, got
        await stream.send(b"\r\n")  # the second head ends now
        while not got.endswith(b'{"status":"ok"}'):
            got += await stream.receive()
    assert got.count(b"HTTP/1.1 200") == 2 and b"HTTP/1.1 408" not in got, got
    await stream.aclose()


def test_every_server_of_the_service_uses_the_bounded_protocol() -> None:
    api = make_server(object(), "127.0.0.1", 0)  # type: ignore[arg-type]
    worker = make_worker_server(_Observable(), "127.0.0.1", 0)
    assert api.config.http is BoundedHttpToolsProtocol
    assert worker.config.http is BoundedHttpToolsProtocol


class _Observable:
    status = WorkerStatus(worker_id="w", profiles={})

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        return True, {}
