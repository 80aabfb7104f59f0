"""The sharded provider pool opens as many connections as asked, never more, and reuses them.

A real HTTP server (anyio TCP, HTTP/1.1 keep-alive) holds every request until ``LIMIT`` are in
flight at once: if the shards together could not open ``LIMIT`` connections the test would time
out; if they opened more, the peak would say so. Twice as many requests as connections are
sent, so half of them queue behind busy connections and then reuse them.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream

from service.providers.pool import ShardedClient

pytestmark = pytest.mark.anyio

LIMIT = 5
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


class HoldingServer:
    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.connections = 0
        self.all_in = anyio.Event()

    async def handle(self, stream: SocketStream) -> None:
        self.connections += 1
        async with stream:
            buffer = b""
            while True:
                try:
                    chunk = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.active += 1
                    self.peak = max(self.peak, self.active)
                    if self.active >= LIMIT:
                        self.all_in.set()
                    with anyio.fail_after(60):
                        await self.all_in.wait()
                    self.active -= 1
                    await stream.send(RESPONSE)


async def test_shards_open_the_requested_connections_and_no_more() -> None:
    server = HoldingServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    client = ShardedClient(max_connections=LIMIT, timeout=httpx.Timeout(60))
    assert client.shards == LIMIT
    statuses: list[int] = []

    async def call(_: Any = None) -> None:
        response = await client.request("GET", f"http://127.0.0.1:{port}/")
        statuses.append(response.status_code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as calls:
                for _ in range(2 * LIMIT):  # twice as many requests as connections
                    calls.start_soon(call)
        await client.aclose()
        tg.cancel_scope.cancel()
    assert statuses == [200] * (2 * LIMIT)
    assert server.peak == LIMIT
    assert server.connections == LIMIT  # the second wave reused the kept-alive connections


async def test_a_request_reuses_the_connection_freed_last() -> None:
    """Sequential requests stay on one kept-alive connection (the most recently freed), not
    a new one per shard."""
    server = HoldingServer()
    server.all_in.set()  # answer at once
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    client = ShardedClient(max_connections=LIMIT, timeout=httpx.Timeout(60))
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        with anyio.fail_after(60):
            for _ in range(3 * LIMIT):
                response = await client.request("GET", f"http://127.0.0.1:{port}/")
                assert response.status_code == 200
        await client.aclose()
        tg.cancel_scope.cancel()
    assert server.connections == 1


async def test_closing_closes_every_shard_when_one_fails_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = ShardedClient(max_connections=3, timeout=httpx.Timeout(5.0))
    closed: list[int] = []
    for i, transport in enumerate(pool._transports):

        async def close(i: int = i) -> None:
            closed.append(i)
            if i == 0:
                raise OSError("bad file descriptor")

        monkeypatch.setattr(transport, "aclose", close)
    with pytest.raises(OSError, match="bad file descriptor"):
        await pool.aclose()
    assert closed == [0, 1, 2]
