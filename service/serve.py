"""Run an ASGI app with uvicorn inside our own anyio task group.

Why a subclass: ``uvicorn.Server.serve`` installs its own SIGINT/SIGTERM handlers, which would
fight the process-wide shutdown sequence (stop claiming, drain, stop PostgreSQL). The
composition root owns signals; servers are told to stop through ``should_exit``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn


class EmbeddedServer(uvicorn.Server):
    # Called as shutdown begins, before uvicorn waits (up to timeout_graceful_shutdown) for the
    # open requests: long-polls are told to answer now (see ``NotifyHub.close_waiters``).
    on_shutdown: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()
        await super().shutdown(sockets)


def make_server(
    app: Any,
    host: str,
    port: int,
    *,
    log_level: str = "warning",
    on_shutdown: Callable[[], None] | None = None,
) -> EmbeddedServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=10,
        # Longer than clients keep idle connections (httpx: 5 s, uvicorn's own default), so
        # the server is never the side that closes one just as a request is sent on it.
        timeout_keep_alive=75,
    )
    server = EmbeddedServer(config)
    server.on_shutdown = on_shutdown
    return server


def bound_port(server: uvicorn.Server) -> int:
    """The port actually bound (useful with port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
    raise RuntimeError("server is not listening")
