"""Large request bodies take turns (two at a time per process, across routes); small ones,
unauthorised ones and slow uploads never hold a turn. The gate is driven with ASGI calls: what
it guards is any app, here one that records how many requests are inside it at once and holds
them until the test lets go; the requests' bodies come from queues the test feeds."""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from service.api import bodygate
from service.api.bodygate import LARGE_BYTES, SLOTS, Slots, body_gate

pytestmark = pytest.mark.anyio

LARGE = [(b"content-length", b"%d" % (2 * LARGE_BYTES))]
TOKEN = "tok-123"
AUTH = [(b"authorization", b"Bearer " + TOKEN.encode())]


class Held:
    """The app behind the gate: reads the whole body, then waits until released."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.entered = 0
        self.bodies: list[bytes] = []
        self.release = anyio.Event()
        self._entry = anyio.Event()

    async def until_entered(self, n: int) -> None:
        while self.entered < n:
            entry = self._entry
            await entry.wait()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.inside += 1
        self.entered += 1
        self.most = max(self.most, self.inside)
        self._entry.set()
        self._entry = anyio.Event()
        try:
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            self.bodies.append(body)
            await self.release.wait()
        finally:
            self.inside -= 1


def scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "headers": headers}


def body(parts: list[bytes]) -> Any:
    """A receive() that hands out ``parts`` as one request body."""
    pending = list(parts)

    async def receive() -> dict[str, Any]:
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    return receive


def stalled() -> Any:
    """A receive() of an upload that sends one chunk and then nothing."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"x" * 1000, "more_body": True}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return receive


async def ignore(message: Any) -> None:
    return None


async def test_large_bodies_take_turns_across_routes_and_others_pass() -> None:
    gate = body_gate(max_bytes=10 * LARGE_BYTES, tokens=[TOKEN], auth_required=True)
    app = Held()
    routes = [gate(app), gate(app)]  # Litestar makes one gate per route: they share the slots
    chunks = [b"a" * LARGE_BYTES, b"b" * LARGE_BYTES]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(2):  # slow uploads: no turn while their bodies are not in
                tg.start_soon(routes[0], scope(LARGE + AUTH), stalled(), ignore)
            for i in range(4):  # four complete large bodies, two routes
                tg.start_soon(routes[i % 2], scope(LARGE + AUTH), body(chunks), ignore)
            await app.until_entered(SLOTS)
            for _ in range(3):  # small requests go straight in
                tg.start_soon(routes[1], scope([(b"content-length", b"512"), *AUTH]),
                              body([b"{}"]), ignore)  # fmt: skip
            tg.start_soon(routes[0], scope(LARGE), body(chunks), ignore)  # no token: to its 401
            await app.until_entered(SLOTS + 4)
            for _ in range(50):  # the waiting large ones stay out, however long we look
                await anyio.lowlevel.checkpoint()
            assert app.inside == SLOTS + 4
            app.release.set()
            await app.until_entered(8)
            tg.cancel_scope.cancel()  # the stalled uploads never finish
    assert app.most == SLOTS + 4
    assert app.bodies.count(b"".join(chunks)) == 5  # replayed whole to the app


async def test_a_body_over_the_limit_goes_on_to_its_413_without_a_turn() -> None:
    gate = body_gate(max_bytes=LARGE_BYTES, tokens=(), auth_required=False)
    app = Held()
    route = gate(app)
    big = [b"a" * LARGE_BYTES, b"b" * LARGE_BYTES, b"c"]
    chunked = [(b"transfer-encoding", b"chunked")]  # its size is known only once read
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for headers in [LARGE, chunked] * 2:
                tg.start_soon(route, scope(headers), body(list(big)), ignore)
            await app.until_entered(4)  # none waited for a turn (SLOTS is 2)
            app.release.set()
    assert app.bodies == [b"".join(big)] * 4  # nothing read here was lost


async def test_a_chunked_body_that_turns_out_small_holds_no_turn_while_handled() -> None:
    """Its size is known only once read; then it is a small request like any other. A
    chunked long-polling claim held a slot (and a reader's place) for its whole wait, and two
    of them made every other chunked or large request wait behind them."""
    slots = Slots(count=1, readers=1)
    gate = body_gate(max_bytes=10 * LARGE_BYTES, tokens=(), auth_required=False, slots=slots)
    app = Held()
    route = gate(app)
    chunked = [(b"transfer-encoding", b"chunked")]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(3):  # held inside the app, like long-polls
                tg.start_soon(route, scope(chunked), body([b"{", b"}"]), ignore)
            await app.until_entered(3)
            tg.start_soon(route, scope(LARGE), body([b"a" * LARGE_BYTES, b"b"]), ignore)
            await app.until_entered(4)  # the large one got the only place and the only slot
            app.release.set()
    assert app.most == 4 and app.bodies.count(b"{}") == 3


class Reads:
    """receive() factories that note which requests had their body read at all."""

    def __init__(self) -> None:
        self.started = 0

    def body(self, parts: list[bytes]) -> Any:
        inner = body(parts)
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                self.started += 1
            message: dict[str, Any] = await inner()
            return message

        return receive


async def test_only_so_many_bodies_are_held_at_once() -> None:
    """Past READERS large requests (read or being handled), the next is not even read: a
    burst holds at most that many raw bodies, not one per request."""
    slots = Slots(count=2, readers=3)
    gate = body_gate(max_bytes=10 * LARGE_BYTES, tokens=(), auth_required=False, slots=slots)
    app, reads = Held(), Reads()
    route = gate(app)
    chunks = [b"a" * LARGE_BYTES, b"b" * LARGE_BYTES]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(route, scope(LARGE), reads.body(list(chunks)), ignore)
            await app.until_entered(2)
            for _ in range(50):
                await anyio.lowlevel.checkpoint()
            assert (app.inside, reads.started) == (2, 3)  # a third read, waiting; two unread
            app.release.set()
    assert (app.entered, reads.started) == (5, 5)


async def test_a_body_not_in_within_the_deadline_is_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Small bodies are bounded by the HTTP protocol: tests/integration/test_http_limits.py.)"""
    monkeypatch.setattr(bodygate, "READ_TIMEOUT_S", 0.05)  # the gate's own deadline, shortened
    gate = body_gate(max_bytes=10 * LARGE_BYTES, tokens=(), auth_required=False)
    app, sent = Held(), []

    async def keep(message: Any) -> None:
        sent.append(message)

    with anyio.fail_after(30):
        await gate(app)(scope(LARGE), stalled(), keep)
    assert app.entered == 0
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"] == "request_timeout"


async def test_a_client_gone_while_its_large_body_was_read_is_not_handled() -> None:
    """Nothing was done for it and no one is there to answer. It takes no turn either."""
    slots = Slots(count=1)
    gate = body_gate(max_bytes=10 * LARGE_BYTES, tokens=(), auth_required=False, slots=slots)
    app, sent = Held(), []
    route = gate(app)

    async def keep(message: Any) -> None:
        sent.append(message)

    parts = [{"type": "http.request", "body": b"a" * 100, "more_body": True},
             {"type": "http.disconnect"}]  # fmt: skip

    async def leaves() -> Any:
        return parts.pop(0)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(route, scope(LARGE), body([b"a" * LARGE_BYTES]), ignore)
            await app.until_entered(1)  # the only slot is taken
            await route(scope(LARGE), leaves, keep)  # returns at once: no turn awaited
            assert (app.entered, sent) == (1, [])
            app.release.set()


async def test_a_request_without_a_body_is_passed_on_unread() -> None:
    """A GET (a long-poll among them) is not read here: its receive() stays the app's, to
    hear the client leave."""
    gate = body_gate(max_bytes=10 * LARGE_BYTES, tokens=(), auth_required=False)
    app, reads = Held(), Reads()
    app.release.set()
    with anyio.fail_after(30):
        await gate(app)(scope([]), reads.body([b""]), ignore)
        await gate(app)(scope([(b"content-length", b"0")]), reads.body([b""]), ignore)
    assert app.entered == 2 and app.bodies == [b"", b""]


def test_a_body_is_declared_by_chunking_or_a_length_other_than_zero() -> None:
    """One reading for the body deadline and the media type guard (they disagreed on 00)."""
    from service.http_limits import has_body

    for headers, expected in (
        ([], False),
        ([(b"content-length", b"0")], False),
        ([(b"content-length", b"00")], False),
        ([(b"content-length", b" 5 ")], True),
        ([(b"content-length", b"x")], True),
        ([(b"host", b"a"), (b"transfer-encoding", b"chunked")], True),
    ):
        assert has_body(headers) is expected, headers
