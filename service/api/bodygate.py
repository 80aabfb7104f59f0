"""At most ``SLOTS`` large request bodies are processed at once per API process.

A batch of 10,000 jobs is ~10 MB of JSON and ~60 MB of Python objects, parameter arrays and
answers while it is handled: ten sent together took an API from 315 to 935 MB (measured), past
the 512 MiB limit of its pod, so a burst of large batches could OOM-kill it and fail every
request in flight. A request whose body is over ``LARGE_BYTES`` (by ``Content-Length``, or
chunked) is therefore read in full first — raw bytes, at most ``MAX_REQUEST_BYTES`` — and only
then waits for a slot to be decoded and handled; small requests, the many single creates and
long-polls, never wait.

Reading before waiting keeps a slow upload from holding a slot (uvicorn has no body deadline);
a request without a valid token is not read here at all but passed on, so the guard refuses it
as usual; a body over the size limit is passed on too, to get its 413. Litestar builds
app-level middleware once per route: ``body_gate`` makes every route's gate share one set of
slots, so the bound is the process's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from service.api.auth import token_from_header, token_matches
from service.config import Settings

LARGE_BYTES = 1024 * 1024
SLOTS = 2


class Slots:
    """The process's slots; the semaphore is made on first use, in the server's event loop."""

    def __init__(self, count: int = SLOTS) -> None:
        self.count = count
        self._semaphore: anyio.Semaphore | None = None

    @property
    def semaphore(self) -> anyio.Semaphore:
        if self._semaphore is None:
            self._semaphore = anyio.Semaphore(self.count)
        return self._semaphore


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
        head: list[ReceiveMessage] = []
        size, more = 0, True
        while more and size <= self.max_bytes:
            message = await receive()
            head.append(message)
            if message["type"] != "http.request":
                break  # the client left: the app sees it as it would have
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        replay = _replay(head, receive)
        if size > self.max_bytes:  # to its 413, without a slot
            await self.app(scope, replay, send)
            return
        async with self.slots.semaphore:
            await self.app(scope, replay, send)

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


def _replay(head: list[ReceiveMessage], receive: Receive) -> Receive:
    """The messages already read, then whatever the client still sends."""
    pending = list(head)

    async def replay() -> ReceiveMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
