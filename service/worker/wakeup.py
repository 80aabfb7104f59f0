"""A sticky, consumable wake-up flag.

Why not a bare ``anyio.Event``: events cannot be cleared, and a wake-up that arrives while the
waiter is busy (a NOTIFY during a claim) must not be lost. ``set()`` may happen at any time,
also before anyone waits; ``wait()`` returns at once if it was set and consumes it.
"""

from __future__ import annotations

import anyio


class Wakeup:
    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until set (or ``timeout`` seconds); True when woken, and the flag is consumed."""
        if timeout is None:
            await self._event.wait()
        else:
            with anyio.move_on_after(max(timeout, 0.0)):
                await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()
            return True
        return False
