"""Connection pools that stay cheap at high concurrency: one single-connection httpx pool per
connection, not one big pool.

Why: httpcore's pool re-examines every pooled connection (``has_expired`` → ``is_idle`` →
a ``poll`` of the socket through anyio's typed attributes) each time it assigns a request and
each time a response is closed, so the cost per request grows with the pool. A worker with 64
requests in flight against one pool spent 93 % of a core there and reached 11 % of the GPU
server's capacity (py-spy, ``bench/saturation.py`` at C=64). Shards of eight connections fixed
that but still cost ~850 µs of worker CPU per chat call; shards of one cost ~600 (the tracing
bench's worker, 16 calls in flight against the zero-latency simulator: 1,210 → ~1,700 jobs/s,
2026-11-30; shards of two and four measured 580 and 650 µs).

A request takes the most recently freed connection (its socket is the least likely to have
been closed by the server's keep-alive timeout); only when every connection is busy does it
queue, in the shard with the fewest requests. All shards share one TLS context: httpx builds
one per client otherwise (16 ms and 0.85 MiB each, loading the CA bundle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


class ShardedClient:
    """``request`` and ``aclose`` of ``httpx.AsyncClient`` over ``max_connections`` clients of
    one connection each."""

    def __init__(
        self,
        *,
        max_connections: int,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout,
        keepalive_expiry: float = 60.0,
    ) -> None:
        # httpx's default verification (the CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR), once.
        tls = httpx.create_ssl_context()
        one = httpx.Limits(
            max_connections=1, max_keepalive_connections=1, keepalive_expiry=keepalive_expiry
        )
        self._clients = [
            httpx.AsyncClient(
                headers=dict(headers or {}),
                limits=one,
                timeout=timeout,
                follow_redirects=False,
                verify=tls,
            )
            for _ in range(max(1, max_connections))
        ]
        self._in_flight = [0] * len(self._clients)
        # Free shards, the most recently freed last (popped first).
        self._free = list(reversed(range(len(self._clients))))

    @property
    def shards(self) -> int:
        return len(self._clients)

    async def request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Response:
        if self._free:
            i = self._free.pop()
        else:  # every connection busy: queue behind the fewest
            i = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[i] += 1
        try:
            return await self._clients[i].request(method, url, **kwargs)
        finally:
            self._in_flight[i] -= 1
            if not self._in_flight[i]:
                self._free.append(i)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
