"""A small HTTP/1.1 load generator (``wrk``-style: keep-alive connections, each sending the
next request as soon as the previous response is read), run in a process of its own so the
server under test does not share its interpreter.

No Debian load tool (``wrk``, ``hey``) is installed on these machines and the project installs
nothing by hand, so this is plain asyncio: a request is pre-encoded once, and a response is read
by its ``Content-Length``; the client costs ~20 us of CPU per request, well below the server's.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit


async def _client(
    host: str, port: int, request: bytes, until: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append((time.perf_counter() - t0) * 1000)
            if status >= 300:
                errors.append(status)
    finally:
        writer.close()


def _run(url: str, path: str, body: bytes, headers: dict[str, str], clients: int,
         seconds: float, out: Connection) -> None:  # fmt: skip
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{head}\r\n"
    ).encode() + body

    async def main() -> tuple[list[float], list[int], float]:
        latencies: list[float] = []
        errors: list[int] = []
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(
            *(_client(host, port, request, until, latencies, errors) for _ in range(clients))
        )
        return latencies, errors, time.monotonic() - started

    out.send(asyncio.run(main()))


def post_load(
    url: str, path: str, body: bytes, *, clients: int = 32, seconds: float = 10.0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """POST ``body`` to ``url + path`` from ``clients`` keep-alive connections for ``seconds``."""
    from bench.common import summary

    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(
        target=_run, args=(url, path, body, headers or {}, clients, seconds, child)
    )
    proc.start()
    latencies, errors, elapsed = parent.recv()
    proc.join(30)
    return {"clients": clients, "requests": len(latencies), "errors": len(errors),
            "seconds": elapsed, "req_per_s": len(latencies) / elapsed,
            "latency_ms": summary(latencies)}  # fmt: skip
