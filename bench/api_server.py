"""Run the real API (uvicorn + Litestar) in a background thread for the API benchmarks."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import anyio

from service.api.app import create_app
from service.config import Settings
from service.serve import bound_port, make_server


@contextlib.contextmanager
def api_server(database_url: str, settings: Settings | None = None) -> Iterator[str]:
    app = create_app(settings or Settings(), database_url=database_url)
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=anyio.run, args=(server.serve,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{bound_port(server)}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
