"""Process supervision shared by every long-running command (api, worker, dev).

Why one supervisor: the shutdown order matters more than any single server. The first
SIGTERM/SIGINT (or SIGHUP) asks the services to stop gracefully, stage by stage: workers
(stage 0) stop claiming and drain while the servers they depend on (stage 1: in ``dev`` the
simulator their jobs call, and the API) keep serving; a second signal cancels everything at
once and the process exits 128 + the signal's number. If any service dies, the others are
stopped too, so a pod never keeps running half-alive. Returns the process exit code.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from service.serve import EmbeddedServer, StartupFailed

log = logging.getLogger("ai_service.runtime")
# SIGHUP too: a closed terminal or a dropped SSH session (`make run`) killed the process on
# the spot, leaving the embedded PostgreSQL, in a session of its own, running
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Service:
    name: str
    run: Callable[[], Awaitable[None]]
    stop: Callable[[], None]
    stage: int = 1  # stopped after every service of a lower stage has finished


class ServiceFailed(Exception):
    """A service could not start, for a reason already logged: no traceback needed."""


def http_service(name: str, server: EmbeddedServer) -> Service:
    def stop() -> None:
        server.should_exit = True

    async def serve() -> None:
        try:
            await server.serve()
        except StartupFailed:  # uvicorn has logged why
            raise ServiceFailed(f"{name} could not start (see the error above)") from None

    return Service(name, serve, stop)


async def supervise(services: list[Service]) -> int:
    exit_code = 0
    stopping = False
    stop_requested = anyio.Event()
    finished = {id(s): anyio.Event() for s in services}

    def stop_all() -> None:
        nonlocal stopping
        stopping = True
        stop_requested.set()

    async def stop_in_stages() -> None:
        await stop_requested.wait()
        for stage in sorted({s.stage for s in services}):
            group = [s for s in services if s.stage == stage]
            for s in group:
                s.stop()
            for s in group:
                await finished[id(s)].wait()

    async with anyio.create_task_group() as outer:

        async def watch_signals() -> None:
            nonlocal exit_code
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                count = 0
                async for signum in signals:
                    count += 1
                    name = signal.Signals(signum).name
                    if count == 1:
                        log.info("received %s: shutting down gracefully", name)
                        stop_all()
                    else:
                        log.warning("received %s again: exiting now", name)
                        exit_code = 128 + signum
                        outer.cancel_scope.cancel()

        async def run_one(service: Service) -> None:
            nonlocal exit_code
            try:
                await service.run()
                if not stopping:
                    log.error("%s stopped unexpectedly; stopping the process", service.name)
                    exit_code = 1
            except ServiceFailed as exc:
                log.error("%s; stopping the process", exc)
                exit_code = 1
            except Exception:
                log.exception("%s crashed; stopping the process", service.name)
                exit_code = 1
            finally:
                finished[id(service)].set()
                stop_all()

        outer.start_soon(watch_signals)
        outer.start_soon(stop_in_stages)
        async with anyio.create_task_group() as inner:
            for s in services:
                inner.start_soon(run_one, s)
        outer.cancel_scope.cancel()
    return exit_code
