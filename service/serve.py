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
from litestar.enums import HttpMethod

from service.config import ConfigError
from service.http_limits import BoundedHttpToolsProtocol

# The methods of every probe route (/healthz, /readyz) on every server: load balancers and
# `curl -I` probe with HEAD; uvicorn sends the headers only.
PROBE_METHODS = (HttpMethod.GET, HttpMethod.HEAD)


class StartupFailed(Exception):
    """uvicorn could not start (it has logged why) and would have exited the process."""


def listen_all(host: str, port: int, setting: str = "the port") -> list[socket.socket]:
    """A listening TCP socket on every address ``host`` stands for (``localhost``: 127.0.0.1
    and ::1, as uvicorn binds them; port 0: any free port); ``ConfigError`` naming ``setting``
    (what chose the address) when one is taken, not ours to bind, or the name does not resolve."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({setting}): {exc}") from None
    addresses = list(dict.fromkeys((info[0], info[4]) for info in infos))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            sockets.append(_bound(family, address, f"{host}:{port} ({setting})"))
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listen(host: str, port: int, setting: str = "the port") -> socket.socket:
    """One listening socket, for an address literal (``127.0.0.1``): see ``listen_all``."""
    first, *others = listen_all(host, port, setting)
    for sock in others:
        sock.close()
    return first


def _bound(family: int, address: Any, shown: str) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # "::" means IPv6 only, as asyncio binds it
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {shown}: {exc.strerror or exc}") from None
    return sock


class EmbeddedServer(uvicorn.Server):
    # Called as shutdown begins, before uvicorn waits (up to timeout_graceful_shutdown) for the
    # open requests: long-polls are told to answer now (see ``NotifyHub.close_waiters``).
    on_shutdown: Callable[[], None] | None = None
    _sockets: list[socket.socket] | None = None

    def listen(self, setting: str) -> None:
        """Bind the configured host and port now (see the module docstring); ``serve`` then
        serves these sockets. Raises ``ConfigError`` naming ``setting``."""
        if self._sockets is None:
            self._sockets = listen_all(self.config.host, self.config.port, setting)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None and self._sockets is not None:
            sockets = self._sockets
        try:
            await super().serve(sockets)
        except SystemExit:  # it cannot listen, or the app's start-up failed: logged above
            raise StartupFailed("the server could not start (see the error above)") from None
        finally:
            for sock in self._sockets or ():
                sock.close()

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
        # no handlers of uvicorn's own: its lines go through ours (service/logs.py), one JSON
        # object per line like every other, not "WARNING:  ..." in the middle of the stream
        log_config=None,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=10,
        # Longer than clients keep idle connections (httpx: 5 s, uvicorn's own default), so
        # the server is never the side that closes one just as a request is sent on it.
        timeout_keep_alive=75,
        http=BoundedHttpToolsProtocol,  # a bounded request head, received in bounded time
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
