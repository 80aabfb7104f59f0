"""Connection pools that stay cheap at high concurrency: several small httpx pools, not one big.

Why: httpcore's pool re-examines every pooled connection (``has_expired`` → ``is_idle`` →
socket checks through anyio's typed attributes) each time it assigns a request, so the cost per
request grows with the pool and a worker with 64 requests in flight against one pool spent 93 %
of a core there and reached 11 % of the GPU server's capacity (py-spy, ``bench/saturation.py``
at C=64). Shards of at most ``SHARD_SIZE`` connections keep that scan short; a request goes to
the shard with the most free connections, so connections are still reused (keep-alive).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx

SHARD_SIZE = 8


class ShardedClient:
    """``request`` and ``aclose`` of ``httpx.AsyncClient`` over ``ceil(n / SHARD_SIZE)`` pools."""

    def __init__(
        self,
        *,
        max_connections: int,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout,
        keepalive_expiry: float = 60.0,
    ) -> None:
        shards = max(1, math.ceil(max_connections / SHARD_SIZE))
        base, extra = divmod(max(max_connections, shards), shards)
        # Together exactly max_connections (the GPU server's concurrency is what it is sized to).
        self._capacity = [base + (1 if i < extra else 0) for i in range(shards)]
        self._clients = [
            httpx.AsyncClient(
                headers=dict(headers or {}),
                limits=httpx.Limits(
                    max_connections=cap,
                    max_keepalive_connections=cap,
                    keepalive_expiry=keepalive_expiry,
                ),
                timeout=timeout,
                follow_redirects=False,
            )
            for cap in self._capacity
        ]
        self._in_flight = [0] * shards

    @property
    def shards(self) -> int:
        return len(self._clients)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        # The shard with the most free connections (queueing in a full shard while another has
        # room would waste a connection the server could serve).
        i = max(range(len(self._clients)), key=lambda k: self._capacity[k] - self._in_flight[k])
        self._in_flight[i] += 1
        try:
            return await self._clients[i].request(method, url, **kwargs)
        finally:
            self._in_flight[i] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
