"""Running the simulator: in-process for tests (``serve_simulator``) or as a process (CLI).

Why we bind the socket ourselves: with a listening socket in hand before uvicorn starts, the
URL is known at once (port 0 picks a free port) and connections made before uvicorn's first
``accept`` wait in the kernel backlog, so tests never poll for readiness.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn

from service.serve import EmbeddedServer, listen
from service.simulator.app import Simulator, create_app
from service.simulator.config import SimulatorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningSimulator:
    """A simulator serving in this process: its base URL (no ``/v1``) and live state."""

    url: str
    state: Simulator

    def __str__(self) -> str:
        return self.url


def make_simulator_server(app: Any, config: SimulatorConfig, log_level: str) -> EmbeddedServer:
    """A uvicorn server that leaves signals to the process's supervisor."""
    return EmbeddedServer(_config(app, config, log_level))


def _config(app: Any, config: SimulatorConfig, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        access_log=False,
        log_config=None,  # its lines go through our handlers (service/serve.py)
        lifespan="on",
        # vLLM's default (VLLM_HTTP_TIMEOUT_KEEP_ALIVE=5): clients must cope with a server that
        # closes idle connections after 5 s, as the real one does.
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
    )


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@asynccontextmanager
async def serve_simulator(
    config: SimulatorConfig | None = None, **changes: Any
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator on ``127.0.0.1`` (port 0 by default) for the duration of the block.

    ``changes`` override fields of ``config``: ``serve_simulator(capacity=2, fail_rate=1)``.
    """
    base = config or SimulatorConfig(port=0)
    cfg = dataclasses.replace(base, **changes) if changes else base
    app, state = create_app(cfg)
    sock = listen(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    server = make_simulator_server(app, cfg, "warning")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: server.serve(sockets=[sock]))
            try:
                yield RunningSimulator(base_url(cfg.host, port), state)
            finally:
                state.stopping.set()
                server.should_exit = True
    finally:
        sock.close()


def run_simulator(
    host: str = "127.0.0.1", port: int = 8000, capacity: int = 8, **options: Any
) -> int:
    """Serve until SIGTERM/SIGINT (the ``ai-service simulate-provider`` command); returns the
    exit code: 0 after a graceful stop, as the service's own commands (uvicorn's ``run()``
    re-raised the signal after its shutdown, so a clean stop exited 143)."""
    cfg = SimulatorConfig(host=host, port=port, capacity=capacity, **options)
    app, _ = create_app(cfg)
    from service.runtime import http_service, supervise

    server = make_simulator_server(app, cfg, "info")
    server.listen("--host, --port")  # a port taken: ConfigError, one line, before "on http://"
    log.warning(
        "simulated inference server (not a model) on http://%s:%d: capacity %d per model, "
        "latency %gms + %gms/token, %gms/audio-second, fail rate %g; models %s",
        host, port, cfg.capacity, cfg.latency_ms, cfg.per_token_ms, cfg.per_audio_second_ms,
        cfg.fail_rate, ", ".join((*cfg.chat_models, *cfg.audio_models)),
    )  # fmt: skip
    return int(anyio.run(supervise, [http_service("simulator", server)]))
