"""The sidecar's HTTP app: ``GET /infra/status`` (everything, gathered concurrently) and
``GET /healthz``. Read-only; it exposes no secrets and accepts no input beyond the path.

A collection is kept for ``FRESH_FOR_S``: every API replica relays this page for every
dashboard and status call, and each collection starts NVML, lists containers and scrapes each
vLLM; callers that arrive while one runs wait for it instead of starting their own."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
from litestar import Litestar, get, route

from service.serve import PROBE_METHODS
from service.sidecar import SOURCE_DEADLINE_S
from service.sidecar.containers import read_containers
from service.sidecar.gpu import read_gpus
from service.sidecar.vllm import read_vllm

FRESH_FOR_S = 2.0


class OneNvmlRead:
    """NVML readings, one at a time. A wedged driver never returns: the reading is left to
    its thread after ``SOURCE_DEADLINE_S``, and while that thread is stuck no other starts —
    each collection (every 2 s while anyone polls) started one more before, without end."""

    def __init__(self) -> None:
        self._busy = False

    def _read(self) -> dict[str, Any]:
        try:
            return read_gpus()
        finally:
            self._busy = False  # (in the thread, whenever the driver answers)

    async def read(self) -> dict[str, Any]:
        unavailable: dict[str, Any] = {"available": False, "devices": []}
        if self._busy:
            return {**unavailable, "reason": "NVML has not answered an earlier reading yet"}
        self._busy = True
        with anyio.move_on_after(SOURCE_DEADLINE_S):
            return await anyio.to_thread.run_sync(self._read, abandon_on_cancel=True)
        return {**unavailable, "reason": f"NVML did not answer within {SOURCE_DEADLINE_S:g}s"}


def create_sidecar_app(vllm_metrics: dict[str, str], docker_socket: str) -> Litestar:
    nvml = OneNvmlRead()
    lock = anyio.Lock()
    last: dict[str, Any] = {}
    last_at = -FRESH_FOR_S

    @route("/healthz", http_method=PROBE_METHODS)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/infra/status")
    async def status() -> dict[str, Any]:
        nonlocal last, last_at
        async with lock:
            if time.monotonic() - last_at >= FRESH_FOR_S:
                last = await collect()
                last_at = time.monotonic()
            return last

    async def collect() -> dict[str, Any]:
        started = time.monotonic()
        result: dict[str, Any] = {"vllm": []}
        async with httpx.AsyncClient(timeout=3.0) as client:

            async def gpus() -> None:
                result["gpus"] = await nvml.read()

            async def containers() -> None:
                result["containers"] = await read_containers(docker_socket)

            async def one(name: str, url: str) -> None:
                result["vllm"].append(await read_vllm(name, url, client))

            async with anyio.create_task_group() as tg:
                tg.start_soon(gpus)
                tg.start_soon(containers)
                for name, url in vllm_metrics.items():
                    tg.start_soon(one, name, url)
        result["vllm"].sort(key=lambda v: v["name"])
        result["collected_ms"] = round((time.monotonic() - started) * 1000, 1)
        return result

    return Litestar(route_handlers=[healthz, status], logging_config=None, openapi_config=None)
