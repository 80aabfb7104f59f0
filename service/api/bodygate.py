"""At most ``SLOTS`` large request bodies are read and processed at once per API process.

A batch of 10,000 jobs is ~10 MB of JSON and ~60 MB of Python objects, parameter arrays and
answers while it is handled: ten sent together took an API from 315 to 935 MB (measured), past
the 512 MiB limit of its pod, so a burst of large batches could OOM-kill it and fail every
request in flight. Requests above ``LARGE_BYTES`` (by ``Content-Length``; a chunked body of
unknown size counts as large) wait here for a slot instead; small requests, the many single
creates and long-polls, never wait. The wait happens before the body is read, so a waiting
request holds only its socket.
"""

from __future__ import annotations

import anyio
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

LARGE_BYTES = 1024 * 1024
SLOTS = 2


class LargeBodyGate:
    def __init__(self, app: ASGIApp, *, large_bytes: int = LARGE_BYTES, slots: int = SLOTS):
        self.app = app
        self.large_bytes = large_bytes
        self.slots = slots
        self._gate: anyio.Semaphore | None = None  # made on first use, in the server's loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not self._large(scope):
            await self.app(scope, receive, send)
            return
        if self._gate is None:
            self._gate = anyio.Semaphore(self.slots)
        async with self._gate:
            await self.app(scope, receive, send)

    def _large(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    return int(value) > self.large_bytes
                except ValueError:
                    return False  # refused as malformed downstream
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                return True
        return False
