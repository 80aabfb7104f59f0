"""``GET /api/v1/providers/status`` and ``GET /api/v1/infra/status`` on the real API, against
the simulator, a real infra sidecar app and small real HTTP servers (nothing is mocked)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from service.config import Settings
from service.providers.status import ProviderConfig, ProviderStatusBoard, infra_url
from service.sidecar.app import create_sidecar_app
from service.simulator import serve_simulator
from tests.helpers import free_port, lifespan, serve_asgi
from tests.integration.api_server import running_api

pytestmark = pytest.mark.anyio

FAST = {"latency_ms": 1.0, "per_token_ms": 0.0, "per_audio_second_ms": 0.0}
KEY = "sk-status-secret-key"


class ModelsServer:
    """An OpenAI-compatible ``/v1/models`` that counts calls and answers when ``gate`` opens."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = anyio.Event()
        self._called = anyio.Event()

    async def wait_calls(self, n: int) -> None:
        while self.calls < n:
            await self._called.wait()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        self.calls += 1
        self._called.set()
        self._called = anyio.Event()
        await self.gate.wait()
        body = b'{"object": "list", "data": [{"id": "qwen2.5-14b"}]}'
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


async def status_of(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/api/v1/providers/status")
    assert r.status_code == 200, r.text
    return {p["name"]: p for p in r.json()["providers"]}


async def test_configured_providers_are_probed_without_leaking_keys(db_url: str) -> None:
    async with serve_simulator(api_key=KEY, **FAST) as sim:
        with_creds = sim.url.replace("http://", "http://user:hunter2@")
        settings = Settings.from_env(
            {"LLM_BASE_URL": sim.url + "/v1", "LLM_API_KEY": KEY, "VOXTRAL_BASE_URL": with_creds,
             "VOXTRAL_API_KEY": "sk-wrong-key", "DB_POOL_SIZE": "4"}
        )  # fmt: skip
        async with running_api(db_url, settings) as api:
            r = await api.client.get("/api/v1/providers/status")
    assert r.status_code == 200
    assert KEY not in r.text and "hunter2" not in r.text and "sk-wrong-key" not in r.text
    body = r.json()
    assert body["checked_at"]
    llm, voxtral = body["providers"]
    assert llm["name"] == "llm" and llm["configured"] is True
    assert llm["base_url"] == sim.url + "/v1"
    assert llm["reachable"] is True and llm["latency_ms"] >= 0
    assert llm["models"] == ["qwen2.5-14b", "mistralai/Voxtral-Small-24B-2507"]
    assert llm["model"] == "qwen2.5-14b" and llm["model_served"] is True
    assert "error" not in llm and "last_error" not in llm
    assert llm["simulated"] is True  # the simulator says so: its answers are synthetic
    # the Voxtral key is wrong: reachable (it answered), but the 401 is the error
    assert voxtral["base_url"] == sim.url  # credentials stripped
    assert voxtral["reachable"] is True
    assert "HTTP 401" in voxtral["error"] and voxtral["last_error"] == voxtral["error"]
    assert "models" not in voxtral


async def test_unconfigured_unreachable_and_unserved_model(db_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with serve_simulator(**FAST) as sim:
        settings = Settings.from_env(
            {"LLM_BASE_URL": dead, "VOXTRAL_BASE_URL": sim.url, "VOXTRAL_MODEL": "whisper-1"}
        )
        async with running_api(db_url, settings) as api:
            status = await status_of(api.client)
        async with running_api(db_url, Settings()) as api:
            none = await status_of(api.client)
    assert status["llm"]["reachable"] is False and "simulated" not in status["llm"]
    assert "unreachable" in status["llm"]["error"]
    assert "latency_ms" not in status["llm"]
    assert status["voxtral"]["reachable"] is True
    assert status["voxtral"]["model_served"] is False
    assert "'whisper-1' is not served" in status["voxtral"]["error"]
    assert none == {
        "llm": {"name": "llm", "configured": False, "model": "qwen2.5-14b"},
        "voxtral": {
            "name": "voxtral",
            "configured": False,
            "model": "mistralai/Voxtral-Small-24B-2507",
        },
    }


async def test_concurrent_callers_share_one_probe_and_the_answer_is_cached(db_url: str) -> None:
    models = ModelsServer()
    async with serve_asgi(models) as url:
        settings = Settings.from_env({"LLM_BASE_URL": url})
        async with running_api(db_url, settings) as api:
            api.app.state.provider_board.ttl = 3600.0  # "fresh" must not hang on the clock
            answers: list[dict[str, Any]] = []

            async def ask() -> None:
                answers.append(await status_of(api.client))

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(ask)
                await models.wait_calls(1)
                models.gate.set()
            again = await status_of(api.client)  # within the cache's lifetime
    assert models.calls == 1
    assert len(answers) == 8 and all(a == answers[0] for a in answers)
    assert answers[0]["llm"]["model_served"] is True
    assert again == answers[0]


async def test_a_waiter_probes_itself_when_the_shared_probe_is_cancelled() -> None:
    models = ModelsServer()
    async with serve_asgi(models) as url:
        board = ProviderStatusBoard([ProviderConfig("llm", url, "qwen2.5-14b", None)], ttl=0.0)
        try:
            got: list[dict[str, Any]] = []
            async with anyio.create_task_group() as tg:
                leader = anyio.CancelScope()

                async def first() -> None:
                    with leader:
                        await board.snapshot()

                async def second() -> None:
                    got.append(await board.snapshot())

                tg.start_soon(first)
                tg.start_soon(second)
                await models.wait_calls(1)
                leader.cancel()  # the caller that started the probe goes away
                await models.wait_calls(2)
                models.gate.set()
        finally:
            await board.aclose()
    assert got[0]["providers"][0]["model_served"] is True


async def test_status_routes_need_the_token(db_url: str) -> None:
    settings = Settings.from_env({"AI_SERVICE_TOKEN": "t0ken"})
    async with running_api(db_url, settings) as api:
        for path in ("/api/v1/providers/status", "/api/v1/infra/status"):
            r = await api.client.get(path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
            ok = await api.client.get(path, headers={"Authorization": "Bearer t0ken"})
            assert ok.status_code == 200


def test_infra_url_accepts_the_sidecar_root() -> None:
    assert infra_url("http://ai:9400") == "http://ai:9400/infra/status"
    assert infra_url("http://ai:9400/") == "http://ai:9400/infra/status"
    assert infra_url("http://ai:9400/infra/status") == "http://ai:9400/infra/status"


async def test_infra_status_relays_the_sidecar(db_url: str, tmp_path: Any) -> None:
    async with serve_simulator(**FAST) as sim:
        async with httpx.AsyncClient() as c:  # some traffic, so the histograms have counts
            chat = {"model": "qwen2.5-14b", "messages": [{"role": "user", "content": "hi"}]}
            r = await c.post(f"{sim.url}/v1/chat/completions", json=chat)
            assert r.status_code == 200
        sidecar = create_sidecar_app(
            {"qwen2.5-14b": f"{sim.url}/metrics"}, str(tmp_path / "no-docker.sock")
        )
        async with serve_asgi(sidecar) as side:
            for configured in (side, f"{side}/infra/status"):
                settings = Settings.from_env({"INFRA_STATUS_URL": configured})
                async with running_api(db_url, settings) as api:
                    r = await api.client.get("/api/v1/infra/status")
                    assert r.status_code == 200, r.text
                    body = r.json()
                    assert body["configured"] is True and body["reachable"] is True
                    assert body["url"] == f"{side}/infra/status"
                    assert "error" not in body
                    assert body["containers"]["available"] is False
                    assert body["gpus"]["available"] is False
                    (vllm,) = body["vllm"]
                    assert vllm["name"] == "qwen2.5-14b" and vllm["reachable"] is True
                    assert vllm["requests_running"] == 0
                    assert vllm["e2e_request_latency"]["count"] == 1
                    assert vllm["simulated"] is True  # no GPU behind these figures


async def test_infra_status_unset_and_unreachable(db_url: str) -> None:
    async with running_api(db_url, Settings()) as api:
        r = await api.client.get("/api/v1/infra/status")
        assert r.status_code == 200 and r.json() == {"configured": False}
    dead = f"http://127.0.0.1:{free_port()}"
    async with running_api(db_url, Settings.from_env({"INFRA_STATUS_URL": dead})) as api:
        r = await api.client.get("/api/v1/infra/status")
    assert r.status_code == 200
    body = r.json()
    assert body["configured"] is True and body["reachable"] is False
    assert body["url"] == f"{dead}/infra/status"
    assert "unreachable" in body["error"]
