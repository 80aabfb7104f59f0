"""The connection pool, with reconnection attempts capped at a steady pace.

Why: psycopg_pool retries a lost connection after 1, 2, 4, 8 … seconds (up to its
``reconnect_timeout``, 5 minutes). After a PostgreSQL restart or failover of a minute, the
next attempt could be 30-60 s away: workers kept failing their claims, ``/readyz`` said the
database was unreachable and running jobs lost their leases for up to ~45 s after the server
was back (measured with a 70 s outage). Here the pause between attempts doubles from 1 s
only up to ``RECONNECT_MAX_DELAY``, so a pool is whole again within about that long of the
server's return. Everything else is psycopg_pool's.

It overrides the pool's ``_add_connection`` (not a public hook; psycopg-pool 3.2 and 3.3
have the same signature): ``tests/integration/test_db_reconnect.py`` checks the pace with
the installed version, so an upgrade that changes it fails there rather than in production.
"""

from __future__ import annotations

import random
from typing import Any

from psycopg_pool import AsyncConnectionPool
from psycopg_pool.base import AttemptWithBackoff

RECONNECT_MAX_DELAY = 2.0  # seconds between attempts while the server stays unreachable


class _SteadyAttempt(AttemptWithBackoff):
    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        if self.delay > RECONNECT_MAX_DELAY:  # jittered as psycopg_pool's first pause is, so
            # the pooled connections of many processes do not all knock at the same instant
            self.delay = RECONNECT_MAX_DELAY * random.uniform(0.9, 1.0)


class ReconnectingPool(AsyncConnectionPool[Any]):
    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        if attempt is None:
            attempt = _SteadyAttempt(timeout=self.reconnect_timeout)
        await super()._add_connection(attempt, growing=growing)
