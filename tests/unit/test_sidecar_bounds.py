"""The sidecar's sources are bounded and say nothing secret: a vLLM that never finishes its
page, a compressed page, a metrics URL with credentials, several engines' KV-cache gauges, a
GPU with one unsupported reading, odd Docker rows, and a burst of status requests."""

from __future__ import annotations

import sys
import types
from typing import Any

import anyio
import httpx
import pytest

from service.sidecar import app as sidecar_app
from service.sidecar import vllm
from service.sidecar.containers import _item
from service.sidecar.gpu import read_gpus
from tests.helpers import lifespan, serve_asgi

PAGE = (
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    'vllm:kv_cache_usage_perc{engine="0"} 0.6\n'
    'vllm:kv_cache_usage_perc{engine="1"} 0.8\n'
    "# TYPE vllm:gpu_cache_usage_perc gauge\n"
    'vllm:gpu_cache_usage_perc{engine="0"} 0.99\n'
    "# TYPE vllm:num_requests_running gauge\n"
    'vllm:num_requests_running{engine="0"} 3\n'
    'vllm:num_requests_running{engine="1"} 4\n'
)


class Page:
    """An ASGI vLLM ``/metrics``: answers ``PAGE``, or 401, or stalls after the headers."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests = 0
        self.release = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        self.requests += 1
        if self.mode == "401":
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})
            return
        headers = [(b"content-encoding", b"gzip")] if self.mode == "gzip" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.mode == "stall":
            await send({"type": "http.response.body", "body": b"# a", "more_body": True})
            await self.release.wait()  # (set when the test ends)
        await send({"type": "http.response.body", "body": PAGE.encode()})


def with_credentials(url: str) -> str:
    return url.replace("http://", "http://admin:hunter2-secret@")


async def test_engines_kv_cache_is_their_mean_and_the_old_name_is_ignored() -> None:
    out = vllm.summarise(PAGE)
    assert out["kv_cache_usage"] == pytest.approx(0.7)
    assert out["requests_running"] == 7


async def test_a_page_that_never_ends_costs_its_entry_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm, "READ_DEADLINE_S", 0.2)
    page = Page("stall")
    async with serve_asgi(page) as url, httpx.AsyncClient() as client:
        out = await vllm.read_vllm("llm", f"{url}/metrics", client)
        page.release.set()
    assert out["reachable"] is False and "within 0.2s" in out["error"]


async def test_a_compressed_page_is_refused_not_inflated() -> None:
    async with serve_asgi(Page("gzip")) as url, httpx.AsyncClient() as client:
        out = await vllm.read_vllm("llm", f"{url}/metrics", client)
    assert out["reachable"] is False and "compressed" in out["error"]


async def test_credentials_in_a_metrics_url_are_never_shown() -> None:
    for page in (Page("401"), Page("ok")):
        async with serve_asgi(page) as url, httpx.AsyncClient() as client:
            out = await vllm.read_vllm("llm", with_credentials(f"{url}/metrics"), client)
        assert "hunter2" not in repr(out) and "admin" not in repr(out), out
        assert out["url"] == f"{url}/metrics"


async def test_status_requests_share_one_collection_while_it_is_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sidecar_app, "FRESH_FOR_S", 3600.0)  # "fresh" must not hang on the clock
    page = Page("ok")
    async with serve_asgi(page) as url:
        app = sidecar_app.create_sidecar_app({"llm": f"{url}/metrics"}, "/nonexistent.sock")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(client.get, "/infra/status")
            body = (await client.get("/infra/status")).json()
    assert page.requests == 1
    assert body["vllm"][0]["requests_running"] == 7 and body["containers"]["available"] is False
    assert "simulated" not in body["vllm"][0]  # a server that does not say it is the simulator


async def test_a_wedged_gpu_driver_holds_one_thread_not_one_per_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    monkeypatch.setattr(sidecar_app, "SOURCE_DEADLINE_S", 0.05)
    monkeypatch.setattr(sidecar_app, "FRESH_FOR_S", 0.0)  # every request collects anew
    wedged, calls = threading.Event(), []

    def read_gpus() -> dict[str, Any]:
        calls.append(1)
        wedged.wait(60)  # a driver that does not answer (released at the end of the test)
        return {"available": True, "devices": []}

    monkeypatch.setattr(sidecar_app, "read_gpus", read_gpus)
    app = sidecar_app.create_sidecar_app({}, "/nonexistent.sock")
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            reasons = [(await client.get("/infra/status")).json()["gpus"]["reason"]
                       for _ in range(5)]  # fmt: skip
    finally:
        wedged.set()
    assert calls == [1]  # one thread stuck in the driver, not five
    assert reasons[0] == "NVML did not answer within 0.05s"
    assert set(reasons[1:]) == {"NVML has not answered an earlier reading yet"}


def test_one_unsupported_gpu_reading_is_none_not_every_gpu_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NVMLError(Exception):
        pass

    def power(handle: int) -> int:
        if handle == 1:
            raise NVMLError("Not Supported")
        return 250_000

    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA L40S",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=1, total=2),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=50),
        nvmlDeviceGetTemperature=lambda h, kind: 60,
        nvmlDeviceGetPowerUsage=power,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    out = read_gpus()
    assert out["available"] is True
    assert [d["power_w"] for d in out["devices"]] == [250.0, None]
    assert [d["name"] for d in out["devices"]] == ["NVIDIA L40S"] * 2


def test_docker_rows_of_an_unexpected_shape_are_skipped() -> None:
    assert _item("nope") is None
    assert _item({"Names": None, "Image": "vllm"}) == {
        "name": "?", "image": "vllm", "state": None, "status": None
    }  # fmt: skip
    assert _item({"Names": ["/qwen"], "State": "running"})["name"] == "qwen"  # type: ignore[index]
