"""Large request bodies take turns (two at a time); small ones never wait. The gate is driven
with ASGI calls directly: what it guards is any app, here one that records how many requests
are inside it at once and holds them until the test lets go."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from service.api.bodygate import SLOTS, LargeBodyGate

pytestmark = pytest.mark.anyio


class Held:
    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.entered = 0
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
            await self.release.wait()
        finally:
            self.inside -= 1


def scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "headers": headers}


async def nothing() -> dict[str, Any]:
    return {}


async def ignore(message: Any) -> None:
    return None


async def test_large_bodies_take_turns_and_small_ones_pass() -> None:
    app = Held()
    gate = LargeBodyGate(app)
    large = [(b"content-length", b"%d" % (2 * 1024 * 1024))]
    chunked = [(b"transfer-encoding", b"chunked")]
    small = [(b"content-length", b"512")]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for headers in [large] * 4 + [chunked]:
                tg.start_soon(gate, scope(headers), nothing, ignore)
            await app.until_entered(SLOTS)
            for _ in range(3):  # small requests and requests without a body go straight in
                tg.start_soon(gate, scope(small), nothing, ignore)
            tg.start_soon(gate, scope([]), nothing, ignore)
            await app.until_entered(SLOTS + 4)
            for _ in range(50):  # the waiting large ones stay out, however long we look
                await anyio.lowlevel.checkpoint()
            assert app.inside == SLOTS + 4 and app.entered == SLOTS + 4
            app.release.set()
    assert app.entered == 9 and app.most == SLOTS + 4
