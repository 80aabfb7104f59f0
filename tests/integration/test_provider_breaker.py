"""A worker whose inference server is down pauses claiming instead of failing its queue.

The worker runs the real LLM handler against a port nothing listens on (a vLLM restarting,
loading its weights), then the simulator starts on that port: the jobs that were still
queued must have kept their attempts — the worker asks the server (its model list) whether
it is back rather than spending jobs on it — and all of them complete. Real PostgreSQL, real
HTTP.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio

from service import metrics
from service.handlers.base import HandlerRegistry, ProviderUnavailable
from service.jobs import JobRepository, NewJob
from service.metrics import names
from service.simulator import serve_simulator
from service.worker import breaker
from service.worker.main import Worker
from service.worker.registry import build_registry
from tests.helpers import free_port, lifespan, serve_asgi
from tests.integration.test_worker_runtime import idle, running_worker, settings, until

PROFILE = f"breaker-{uuid.uuid4().hex[:8]}"
FAST = {"latency_ms": 1.0, "per_token_ms": 0.0, "per_audio_second_ms": 0.0}
JOBS = 12
CAPACITY = 2


async def test_a_down_inference_server_pauses_claiming_and_spares_the_queue(
    repo: JobRepository, db_url: str
) -> None:
    port = free_port()
    s = settings(
        llm_base_url=f"http://127.0.0.1:{port}", llm_model=PROFILE, worker_claim_limit=CAPACITY
    )
    registry, clients = build_registry(s)
    worker = Worker(s, db_url, [PROFILE], registry, clients=clients)
    new = NewJob(owner_service="t", task_type="llm_chat", model_profile=PROFILE,
                 input={"user": "hi"}, max_attempts=20)  # fmt: skip
    ids = [i for i, _ in await repo.create_batch([new] * JOBS)]

    def provider() -> dict[str, object]:
        state: dict[str, object] = worker.status.snapshot()["profiles"][PROFILE]["provider"]
        return state

    def paused() -> float | None:
        """What ai_service.worker.paused reports for the profile (the alert's metric)."""
        found = [o.value for o in metrics.workers.observe(names.WORKERS_PAUSED)
                 if o.attributes == {"model_profile": PROFILE}]  # fmt: skip
        return sum(found) if found else None

    async def attempts() -> int:
        return sum([(await repo.get(i)).attempts for i in ids])

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await until(lambda: provider()["state"] == "open", what="claiming to pause")
        assert "unreachable" in str(provider()["last_error"])
        # the start-up check found the server down: no job was claimed, none spent an attempt
        spent = await attempts()
        assert spent == 0, spent
        profile = worker.status.profiles[PROFILE]
        assert profile.breaker is not None
        await until(lambda: profile.breaker.trips >= 2, what="a check that the server is down")
        assert await attempts() == spent  # asking cost no job an attempt
        assert paused() == 1
        async with serve_simulator(port=port, chat_models=(PROFILE,), **FAST):
            for i in ids:
                done = await until(
                    lambda i=i: _completed(repo, i), timeout=120, what=f"job {i} to complete"
                )
                assert done.status == "completed"
            assert provider()["state"] == "closed"
            assert paused() == 0
            await until(lambda: idle(worker), what="the worker to idle")
        worker.stop()
    # every job completed on its first attempt after the outage: none was spent on probing
    assert await attempts() == JOBS + spent


async def _completed(repo: JobRepository, job_id: uuid.UUID) -> object:
    job = await repo.get(job_id)
    return job if job.status in ("completed", "failed") else None


async def test_a_worker_stops_at_once_while_it_checks_a_server_that_never_answers(
    repo: JobRepository, db_url: str
) -> None:
    """The check is bounded by the client's timeout; stopping must not wait for it either."""
    hung = anyio.Event()
    checks = 0

    async def handler(job: object) -> object:
        raise ProviderUnavailable("llm is unreachable", provider_wide=True)

    async def check() -> None:
        nonlocal checks
        checks += 1
        if checks == 1:
            return  # at start-up the server answered; the jobs then fail, and the next hangs
        hung.set()
        await anyio.sleep_forever()

    registry = HandlerRegistry()
    registry.register(["llm_chat"], PROFILE, handler)
    registry.set_health_check(PROFILE, check)
    new = NewJob(owner_service="t", task_type="llm_chat", model_profile=PROFILE, max_attempts=5)
    async with running_worker(db_url, registry, [PROFILE], worker_claim_limit=1) as worker:
        await repo.create_batch([new] * breaker.THRESHOLD)
        with anyio.fail_after(60):  # bounds a hang only: the first pause is 2 s
            await hung.wait()
        assert worker.status.profiles[PROFILE].state == "checking"
        worker.stop()
        await until(lambda: worker.status.state == "stopped", what="the worker to stop")


class Gateway:
    """An OpenAI-compatible gateway that serves chat completions but has no model list; with
    ``nothing``, a server that answers 404 to everything (a wrong base URL, an ingress)."""

    def __init__(self, *, nothing: bool = False) -> None:
        self.models_asked = 0
        self.nothing = nothing

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"].endswith("/models") or self.nothing:
            self.models_asked += scope["path"].endswith("/models")
            status, body = 404, b'{"detail": "Not Found"}'
        else:
            status, body = 200, json.dumps({
                "id": "c1", "object": "chat.completion", "model": PROFILE,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "hi"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }).encode()  # fmt: skip
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


async def test_a_server_without_a_model_list_is_used_without_the_check(
    repo: JobRepository, db_url: str
) -> None:
    """The start-up check cannot be made (GET /v1/models is 404 there): the worker claims as
    before, rather than never (a gateway that does not list its models)."""
    gateway = Gateway()
    async with serve_asgi(gateway) as url:
        s = settings(llm_base_url=url, llm_model=PROFILE, worker_claim_limit=CAPACITY)
        registry, clients = build_registry(s)
        worker = Worker(s, db_url, [PROFILE], registry, clients=clients)
        new = NewJob(owner_service="t", task_type="llm_chat", model_profile=PROFILE,
                     input={"user": "hi"})  # fmt: skip
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            job, _ = await repo.create(new)
            done = await until(lambda: _completed(repo, job.id), what="the job to complete")
            worker.stop()
    assert done.status == "completed" and done.attempts == 1  # type: ignore[attr-defined]
    assert gateway.models_asked == 1  # asked once at start-up, then not again


async def test_a_wrong_base_url_fails_the_start_up_check(repo: JobRepository, db_url: str) -> None:
    """404 for the model list and for the API itself: not a gateway without a model list but
    the wrong place; the profile pauses and no job is spent."""
    async with serve_asgi(Gateway(nothing=True)) as url:
        s = settings(llm_base_url=url + "/api", llm_model=PROFILE, worker_claim_limit=CAPACITY)
        registry, clients = build_registry(s)
        worker = Worker(s, db_url, [PROFILE], registry, clients=clients)
        new = NewJob(owner_service="t", task_type="llm_chat", model_profile=PROFILE,
                     input={"user": "hi"})  # fmt: skip
        job, _ = await repo.create(new)
        stats = worker.status.profiles[PROFILE]
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await until(lambda: stats.as_dict()["provider"]["state"] == "open", what="a pause")
            assert "404" in str(stats.as_dict()["provider"]["last_error"])
            worker.stop()
    untouched = await repo.get(job.id)
    assert (untouched.status, untouched.attempts) == ("pending", 0)
