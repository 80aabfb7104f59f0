"""Jittered exponential backoff for everything the service retries (reconnects, claims, writes).

Why jitter: after a database restart every worker process retries at once; spreading the
retries (AWS "equal jitter") keeps the recovering server from a thundering herd.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 0.05, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._current = initial

    def next(self) -> float:
        """The next delay: half fixed, half random, doubling up to ``maximum``."""
        delay = self._current
        self._current = min(self.maximum, self._current * 2)
        return delay / 2 + random.uniform(0, delay / 2)

    def reset(self) -> None:
        self._current = self.initial
