"""The simulator as one of ``ai-service dev``'s supervised services (``make run``).

Why a separate entry: ``dev`` supervises every server in one process and owns signals, so the
simulator is handed over as a ``Service`` (run/stop) on a port picked now, and its URL goes
into ``LLM_BASE_URL`` / ``VOXTRAL_BASE_URL`` for the in-process worker.
"""

from __future__ import annotations

import socket

from service.runtime import Service
from service.serve import listen
from service.simulator.app import create_app
from service.simulator.config import SimulatorConfig
from service.simulator.server import base_url, make_simulator_server


async def simulator_service(config: SimulatorConfig | None = None) -> tuple[Service, str]:
    """A ``Service`` serving the simulator on 127.0.0.1 (port 0: any free port) and its URL."""
    cfg = config or SimulatorConfig(port=0)
    app, state = create_app(cfg)
    sock: socket.socket = listen(cfg.host, cfg.port)
    server = make_simulator_server(app, cfg, "warning")

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()

    def stop() -> None:
        state.stopping.set()
        server.should_exit = True

    return Service("simulator", run, stop), base_url(cfg.host, sock.getsockname()[1])
