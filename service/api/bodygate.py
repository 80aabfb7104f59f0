"""At most ``SLOTS`` large request bodies are handled, and ``READERS`` held, per API process.

A batch of 10,000 jobs is ~10 MB of JSON and ~60 MB of Python objects, parameter arrays and
answers while it is handled: ten sent together took an API from 315 to 935 MB (measured), past
the 512 MiB limit of its pod, so a burst of large batches could OOM-kill it and fail every
request in flight. A request whose body is over ``LARGE_BYTES`` (by ``Content-Length``, or
chunked) first waits for one of ``READERS`` places, then is read in full — raw bytes, at most
``MAX_REQUEST_BYTES``, within ``READ_TIMEOUT_S`` (else 408) — and only then waits for one of
``SLOTS`` to be decoded and handled. So at most ``READERS`` raw bodies are held (~80 MiB at the
defaults) and ``SLOTS`` decoded; small requests, the many single creates and long-polls, never
wait (a chunked one only for a place to be read in, and then no more).

Reading before taking a slot keeps a slow upload from holding one (every body, small ones
too, must also arrive within ``BODY_TIMEOUT_S`` of its head: ``service/http_limits.py``). A
request without a valid token is not read here at all but passed on, so the guard refuses it
as usual; a body over the size limit is passed on to its 413. A client gone while its body was
read gets no answer and the app never sees the request: nothing was done. Litestar builds
app-level middleware once per route: ``body_gate`` makes every route's gate share one
``Slots``, so the bounds are the process's.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence

import anyio
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from service.api.auth import token_from_header, token_matches
from service.config import Settings
from service.http_limits import BODY_TIMEOUT_S, STATUS_CODES

LARGE_BYTES = 1024 * 1024
SLOTS = 2
READERS = 8
READ_TIMEOUT_S = BODY_TIMEOUT_S  # the HTTP protocol's bound on any body, here from the read


class Slots:
    """The process's places (held while a body is read, and on until it is handled) and slots
    (while it is handled); made on first use, in the server's event loop."""

    def __init__(self, count: int = SLOTS, readers: int = READERS) -> None:
        self.count = count
        self.readers = readers
        self._semaphores: tuple[anyio.Semaphore, anyio.Semaphore] | None = None

    @property
    def semaphores(self) -> tuple[anyio.Semaphore, anyio.Semaphore]:
        if self._semaphores is None:
            self._semaphores = (anyio.Semaphore(self.readers), anyio.Semaphore(self.count))
        return self._semaphores


def body_gate(
    *, max_bytes: int, tokens: Sequence[str], auth_required: bool, slots: Slots | None = None
) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar middleware: every route's gate shares ``slots``."""
    shared = slots or Slots()

    def middleware(app: ASGIApp) -> ASGIApp:
        return LargeBodyGate(app, shared, max_bytes=max_bytes, tokens=tokens,
                             auth_required=auth_required)  # fmt: skip

    return middleware


def body_gate_of(settings: Settings) -> Callable[[ASGIApp], ASGIApp]:
    return body_gate(max_bytes=settings.max_request_bytes, tokens=settings.tokens,
                     auth_required=settings.auth_required)  # fmt: skip


class LargeBodyGate:
    def __init__(
        self,
        app: ASGIApp,
        slots: Slots,
        *,
        max_bytes: int,
        tokens: Sequence[str] = (),
        auth_required: bool = False,
        large_bytes: int = LARGE_BYTES,
    ) -> None:
        self.app = app
        self.slots = slots
        self.max_bytes = max_bytes
        self.accepted = tuple(t.encode() for t in tokens)
        self.auth_required = auth_required
        self.large_bytes = large_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not self._large(scope) or not self._authorized(scope):
            await self.app(scope, receive, send)  # and a declared size over the limit: its 413
            return
        reading, handling = self.slots.semaphores
        async with reading:
            with anyio.move_on_after(READ_TIMEOUT_S) as deadline:
                read, size = await self._read(receive)
            if deadline.cancelled_caught:
                await _answer_408(send)
                return
            replay = _Replay(read, receive)
            del read  # the replay holds the only reference: chunks go as the app reads them
            if replay.gone:  # nothing was done, and no one is there to answer
                return
            if self.large_bytes < size <= self.max_bytes:
                async with handling:
                    await self.app(scope, replay, send)
                return
        # over the limit: to its 413; a chunked body that turned out small (a claim that
        # long-polls, sent by a client that streams its bodies): handled like any small one,
        # holding neither a place nor a slot while it runs
        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> tuple[deque[ReceiveMessage], int]:
        read: deque[ReceiveMessage] = deque()
        size, more = 0, True
        while more and size <= self.max_bytes:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                break  # the client left
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        return read, size

    def _large(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return self.large_bytes < int(value) <= self.max_bytes
                except ValueError:
                    return False  # refused as malformed downstream
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                return True
        return False

    def _authorized(self, scope: Scope) -> bool:
        if not self.auth_required:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = token_from_header(value.decode("latin-1"))
                return given is not None and token_matches(given, self.accepted)
        return False


class _Replay:
    """A receive(): the messages already read, each handed over once, then the client's."""

    def __init__(self, read: deque[ReceiveMessage], receive: Receive) -> None:
        self._read = read
        self._receive = receive
        self.gone = bool(read) and read[-1]["type"] != "http.request"

    async def __call__(self) -> ReceiveMessage:
        if self._read:
            return self._read.popleft()
        return await self._receive()


async def _answer_408(send: Send) -> None:
    body = json.dumps({"error": STATUS_CODES[408], "detail": "the request body did not arrive "
                       f"within {READ_TIMEOUT_S:g} s"}).encode()  # fmt: skip
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               (b"connection", b"close")]  # fmt: skip
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 408,
                                     "headers": headers}  # fmt: skip
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
