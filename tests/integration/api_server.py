"""A real API server for tests: uvicorn on 127.0.0.1:0 in the test's event loop, with the
application's lifespan (pool and long-poll hub), talking to the test's own database."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import httpx
from litestar import Litestar

from service.api.app import close_long_polls, create_app
from service.api.hub import NotifyHub
from service.config import Settings
from service.serve import EmbeddedServer, make_server


@dataclass
class Api:
    url: str
    app: Litestar
    client: httpx.AsyncClient
    server: EmbeddedServer

    @property
    def hub(self) -> NotifyHub:
        hub: NotifyHub = self.app.state.hub
        return hub


@asynccontextmanager
async def running_api(
    database_url: str, settings: Settings | None = None, *, headers: dict[str, str] | None = None
) -> AsyncIterator[Api]:
    settings = settings or Settings(db_pool_size=8)
    app = create_app(settings, database_url=database_url)
    server = make_server(app, "127.0.0.1", 0, on_shutdown=partial(close_long_polls, app))
    # A socket bound and listening before the server starts: connections wait in its backlog
    # until uvicorn accepts them (after the lifespan ran), so nothing has to poll for "started".
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(server.serve, sockets=[sock]))
        try:
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=90) as client:
                assert (await client.get("/healthz")).status_code == 200
                yield Api(url=url, app=app, client=client, server=server)
        finally:
            server.should_exit = True
    sock.close()


def job_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "owner_service": "telephony",
        "task_type": "llm_chat",
        "model_profile": "qwen2.5-14b",
        "input": {"user": "hello"},
    }
    body.update(overrides)
    return body
