"""The typed client (async and sync) against a real server and PostgreSQL."""

from __future__ import annotations

import anyio
import pytest

from service.api.hub import FINISHED_CHANNEL
from service.client import ApiError, AsyncClient, Client
from service.config import Secret, Settings
from tests.integration.api_server import running_api
from tests.integration.test_worker_runtime import until

TOKEN = "client-test-token"


async def test_async_client_end_to_end(db_url: str) -> None:
    settings = Settings(api_tokens=Secret(TOKEN), db_pool_size=6)
    async with running_api(db_url, settings) as api, AsyncClient(api.url, TOKEN) as ai:
        job = await ai.create("telephony", "call_analysis", "qwen2.5-14b", {"user": "hi"},
                              owner_ref="beeline/1", idempotency_key="call-1")  # fmt: skip
        assert (await ai.create("telephony", "call_analysis", "qwen2.5-14b", {"user": "hi"},
                owner_ref="beeline/1", idempotency_key="call-1")).id == job.id  # fmt: skip
        with pytest.raises(ApiError) as err:
            await ai.create("telephony", "call_analysis", "qwen2.5-14b", {"user": "other"},
                            idempotency_key="call-1")  # fmt: skip
        assert err.value.status_code == 409 and err.value.code == "idempotency_conflict"

        batch = await ai.create_batch(
            [{"owner_ref": f"b/{i}"} for i in range(250)],
            defaults={"owner_service": "pf", "task_type": "t", "model_profile": "vision"},
        )
        assert batch.created == 250
        listed = [j.id async for j in ai.list(owner_service="pf", page_size=100)]
        assert listed == sorted((i.id for i in batch.items), reverse=True)
        assert len([j async for j in ai.list(model_profile=["vision"], limit=7)]) == 7

        [claimed] = await ai.claim("w1", "qwen2.5-14b", lease_seconds=60)
        assert claimed.id == job.id
        assert (await ai.heartbeat(job.id, "w1", lease_seconds=120)).status == "running"
        result: list[str] = []

        async def waiter() -> None:
            result.append((await ai.wait(job.id)).status)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await api.hub.until_waiting(FINISHED_CHANNEL, str(job.id))
                done = await ai.complete(job.id, "w1", {"content": "ok"})
        assert done.status == "completed" and result == ["completed"]
        assert (await ai.wait(job.id, timeout=1)).result == {"content": "ok"}

        with pytest.raises(ApiError) as err:
            await ai.complete(job.id, "w1", {})
        assert err.value.code == "state_conflict" and err.value.status == "completed"

        assert (await ai.cancel_where(model_profile=["vision"], owner_ref="b/3")).count == 1
        with pytest.raises(ApiError) as err:
            await ai.cancel_where()
        assert err.value.code == "filter_required"
        assert await ai.claim("w2", ["vision"], task_type="another") == []
        [v] = await ai.claim("w2", ["vision"], task_type=["t"])
        failed = await ai.fail(v.id, "w2", "invalid_input", "bad", retryable=False)
        assert failed.status == "failed"
        assert (await ai.retry(v.id)).status == "pending"
        assert (await ai.retry_where(status=["failed"])).count == 0
        assert (await ai.cancel(v.id)).status == "cancelled"
        pending = await ai.get(batch.items[5].id)
        assert (await ai.wait(pending.id, timeout=0.1)).status == "pending"
        stats = await ai.stats()
        assert stats.totals["completed"] == 1 and stats.totals["cancelled"] == 2

    async with running_api(db_url, settings) as api, AsyncClient(api.url, "wrong") as ai:
        with pytest.raises(ApiError) as err:
            await ai.stats()
        assert err.value.status_code == 401 and TOKEN not in str(err.value)


async def test_sync_client(db_url: str) -> None:
    async with running_api(db_url) as api:

        def use_it() -> None:
            with Client(api.url) as ai:
                job = ai.create("telephony", "llm_chat", "qwen2.5-14b", {"user": "x"})
                assert ai.get(job.id).status == "pending"
                [c] = ai.claim("w", "qwen2.5-14b", wait_seconds=5)
                # given the claimed Job, a call names its run: after a retry and a new claim
                # by the same worker_id, a late call of the first run is refused
                ai.retry(c.id)
                [again] = ai.claim("w", "qwen2.5-14b")
                with pytest.raises(ApiError) as late:
                    ai.complete(c, "w", {"content": "stale"})
                assert late.value.code == "state_conflict" and late.value.status == "running"
                assert ai.heartbeat(again, "w").status == "running"
                ai.complete(again, "w", {"content": "y"})
                assert ai.wait(job.id).result == {"content": "y"}
                assert [j.id for j in ai.list()] == [job.id]
                assert ai.stats().totals["completed"] == 1
                with pytest.raises(ApiError) as err:
                    ai.get("0190a5a0-0000-7000-8000-000000000000")  # no such job
                assert err.value.status_code == 404 and err.value.code == "not_found"
                with pytest.raises(ValueError, match="must be a UUID"):
                    ai.get("not-a-uuid")  # refused before it is sent

        await anyio.to_thread.run_sync(use_it)


async def test_many_waits_do_not_hold_the_clients_other_calls(db_url: str) -> None:
    """A hundred waits on one client (httpx's whole default pool, each long poll holding a
    connection): the call that finishes the job still goes out at once, on connections of
    its own, and every wait returns the finished job."""
    async with running_api(db_url, Settings(db_pool_size=6)) as api, AsyncClient(api.url) as ai:
        job = await ai.create("telephony", "llm_chat", "qwen2.5-14b", {"user": "x"})
        seen: list[str] = []

        async def waiter() -> None:
            seen.append((await ai.wait(job.id, timeout=120)).status)

        with anyio.fail_after(30):  # (before: the complete waited behind the 50 s polls)
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(waiter)
                await until(lambda: api.hub.waiting(FINISHED_CHANNEL, str(job.id)) == 100,
                            what="the hundred waits to wait")  # fmt: skip
                [claimed] = await ai.claim("w", "qwen2.5-14b")
                await ai.complete(claimed, "w", {"content": "done"})
        assert seen == ["completed"] * 100
