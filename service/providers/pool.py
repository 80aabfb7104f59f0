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

``direct`` (the usual case) sends through each shard's ``httpx.AsyncHTTPTransport`` (httpx's
public transport API) instead of an ``AsyncClient``: the client's layers — cookie jar, auth
and redirect flows, URL merging, event hooks — cost ~100 µs of CPU per request (~400 → ~300 µs
in a loop of 4,000 calls to the simulator, 16 in flight) and do nothing for an inference
server: no cookies are kept between jobs, redirects are not followed either way, and
responses come uncompressed. What would need those layers — a proxy from the environment,
credentials in the URL — makes the caller pass ``direct=False`` (see ``client.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from service.providers.bounded import IDENTITY, read_bounded, send_bounded

USER_AGENT = f"python-httpx/{httpx.__version__}"  # what httpx's client would send
# vLLM's server closes a connection idle for 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE). A request sent
# on a pooled connection just as the server closes it fails with a ReadError and costs the job
# an attempt, so pooled connections are dropped first, at 4 s.
KEEPALIVE_EXPIRY = 4.0


class ShardedClient:
    """``request`` and ``aclose`` over ``max_connections`` shards of one connection each."""

    def __init__(
        self,
        *,
        max_connections: int,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        direct: bool = True,
    ) -> None:
        # httpx's default verification (the CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR), once.
        tls = httpx.create_ssl_context()
        one = httpx.Limits(
            max_connections=1, max_keepalive_connections=1, keepalive_expiry=keepalive_expiry
        )
        n = max(1, max_connections)
        self._transports: list[httpx.AsyncHTTPTransport] = []
        self._clients: list[httpx.AsyncClient] = []
        if direct:
            self._transports = [httpx.AsyncHTTPTransport(verify=tls, limits=one) for _ in range(n)]
        else:
            self._clients = [
                httpx.AsyncClient(
                    headers=dict(headers or {}),
                    limits=one,
                    timeout=timeout,
                    follow_redirects=False,
                    verify=tls,
                )
                for _ in range(n)
            ]
        base = {"accept": "*/*", "user-agent": USER_AGENT, **IDENTITY}
        self._headers = base | {k.lower(): v for k, v in (headers or {}).items()}
        self._extensions = {"timeout": timeout.as_dict()}
        self._in_flight = [0] * n
        # Free shards, the most recently freed last (popped first).
        self._free = list(reversed(range(n)))

    @property
    def shards(self) -> int:
        return len(self._in_flight)

    async def request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        headers: Mapping[str, str] | None = None,
        content: Any = None,
    ) -> httpx.Response:
        """The response, read in full (as ``AsyncClient.request`` returns it) unless it is
        compressed or too large (see ``bounded``)."""
        if self._free:
            i = self._free.pop()
        else:  # every connection busy: queue behind the fewest
            i = min(range(len(self._in_flight)), key=self._in_flight.__getitem__)
        self._in_flight[i] += 1
        try:
            if not self._transports:
                client = self._clients[i]
                return await send_bounded(client, method, url, headers=headers, content=content)
            return await self._send(self._transports[i], method, url, headers, content)
        finally:
            self._in_flight[i] -= 1
            if not self._in_flight[i]:
                self._free.append(i)

    async def _send(
        self,
        transport: httpx.AsyncHTTPTransport,
        method: str,
        url: httpx.URL | str,
        headers: Mapping[str, str] | None,
        content: Any,
    ) -> httpx.Response:
        merged = self._headers
        if headers:
            merged = merged | {k.lower(): v for k, v in headers.items()}
        request = httpx.Request(
            method, url, headers=merged, content=content, extensions=self._extensions
        )
        response = await transport.handle_async_request(request)
        response.request = request
        return await read_bounded(response)  # (closes the stream either way)

    async def aclose(self) -> None:
        """Close every transport and client, each even when one before it failed to."""
        failed: BaseException | None = None
        closables: list[httpx.AsyncHTTPTransport | httpx.AsyncClient] = [
            *self._transports,
            *self._clients,
        ]
        for closable in closables:
            try:
                await closable.aclose()
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
