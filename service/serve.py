"""Run an ASGI app with uvicorn inside our own anyio task group.

Why a subclass: ``uvicorn.Server.serve`` installs its own SIGINT/SIGTERM handlers, which would
fight the process-wide shutdown sequence (stop claiming, drain, stop PostgreSQL). The
composition root owns signals; servers are told to stop through ``should_exit``.

Why the socket is bound before uvicorn starts (``listen``, ``EmbeddedServer.listen``): when it
cannot listen, uvicorn logs the error and calls ``sys.exit`` from inside our task group; the
``SystemExit`` then tore through the event loop, whose shutdown could hang on the database
pool's tasks while the embedded PostgreSQL kept running. Bound first, a busy port is one line
naming the setting, before anything else starts.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from service.config import ConfigError


class StartupFailed(Exception):
    """uvicorn could not start (it has logged why) and would have exited the process."""


def listen(host: str, port: int, setting: str = "the port") -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); ``ConfigError`` naming
    ``setting`` (what chose the port) when the address is taken or not ours to bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port} ({setting}): {reason}") from None
    return sock


class EmbeddedServer(uvicorn.Server):
    # Called as shutdown begins, before uvicorn waits (up to timeout_graceful_shutdown) for the
    # open requests: long-polls are told to answer now (see ``NotifyHub.close_waiters``).
    on_shutdown: Callable[[], None] | None = None
    _socket: socket.socket | None = None

    def listen(self, setting: str) -> None:
        """Bind the configured host and port now (see the module docstring); ``serve`` then
        serves this socket. Raises ``ConfigError`` naming ``setting``."""
        if self._socket is None:
            self._socket = listen(self.config.host, self.config.port, setting)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None and self._socket is not None:
            sockets = [self._socket]
        try:
            await super().serve(sockets)
        except SystemExit:  # it cannot listen, or the app's start-up failed: logged above
            raise StartupFailed("the server could not start (see the error above)") from None
        finally:
            if self._socket is not None:
                self._socket.close()

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
