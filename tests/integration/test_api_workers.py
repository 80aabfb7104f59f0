"""Worker-facing routes and long-polling, through real HTTP on real PostgreSQL.

Long-poll tests never sleep: they wait (with generous deadlines that only bound a hang) until
the hub reports the request is waiting and listening, act, and expect the request to return
long before its own ``wait_seconds`` — so only a NOTIFY can have woken it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from service.api.hub import FINISHED_CHANNEL
from service.db import DatabaseUnavailable
from service.db.listen import profile_channel
from service.jobs.model import MAX_JSON_DEPTH
from tests.integration.api_server import Api, job_body, running_api
from tests.integration.test_worker_runtime import until

GENEROUS = 30  # seconds; a deadline against hangs, far below the 60 s wait_seconds used


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    async with running_api(db_url) as api:
        yield api


async def create(api: Api, **kw: Any) -> dict[str, Any]:
    r = await api.client.post("/api/v1/jobs", json=job_body(**kw))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def claim(api: Api, worker: str = "w1", **kw: Any) -> list[dict[str, Any]]:
    body = {"worker_id": worker, "model_profile": "qwen2.5-14b", **kw}
    r = await api.client.post("/api/v1/jobs/claim", json=body)
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


async def long_poll(api: Api, job_id: str, into: dict[str, Any]) -> None:
    """GET the job with ``wait_seconds=60``; its answer goes into ``into``."""
    r = await api.client.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": 60})
    into.update(r.json())


async def test_claim_complete_lifecycle(api: Api) -> None:
    low = await create(api, priority=0)
    high = await create(api, priority=10)
    other = await create(api, model_profile="vision")
    assert await claim(api, model_profile="none") == []
    jobs = await claim(api, limit=5, lease_seconds=120)
    assert [j["id"] for j in jobs] == [high["id"], low["id"]]
    assert all(j["status"] == "running" and j["worker_id"] == "w1" for j in jobs)
    jobs = await claim(api, "w2", model_profile=["vision", "qwen2.5-14b"], limit=5)
    assert [j["id"] for j in jobs] == [other["id"]]

    result = {"content": "ok", "usage": {"total_tokens": 3}}
    r = await api.client.post(
        f"/api/v1/jobs/{high['id']}/complete", json={"worker_id": "w1", "result": result}
    )
    assert r.status_code == 200
    assert r.json()["status"] == "completed" and r.json()["result"]["content"] == "ok"
    # a second completion, or one by a worker that does not hold the job, is a 409
    r = await api.client.post(f"/api/v1/jobs/{high['id']}/complete", json={"worker_id": "w1"})
    assert r.status_code == 409
    assert r.json()["error"] == "state_conflict" and r.json()["status"] == "completed"
    r = await api.client.post(f"/api/v1/jobs/{low['id']}/complete", json={"worker_id": "w9"})
    assert r.status_code == 409 and r.json()["status"] == "running"
    assert "another worker" in r.json()["detail"]


async def test_an_external_worker_claims_only_its_task_types(api: Api) -> None:
    """Its task types share the model profile with the built-in ones (the seed's
    tg_analysis on qwen2.5-14b): it must not be handed jobs it cannot run."""
    chat = await create(api, task_type="llm_chat", input={"user": "hi"})
    tg = await create(api, task_type="tg_analysis", input={"post": 1})
    pf = await create(api, task_type="pf_competitor_analysis", input={"page": 2})
    assert [j["id"] for j in await claim(api, task_type="tg_analysis", limit=5)] == [tg["id"]]
    got = await claim(api, task_type=["pf_competitor_analysis", "llm_chat"], limit=5)
    assert sorted(j["id"] for j in got) == sorted([chat["id"], pf["id"]])
    r = await api.client.post(
        "/api/v1/jobs/claim",
        json={"worker_id": "w", "model_profile": "qwen2.5-14b", "task_type": []},
    )
    assert r.status_code == 422, r.text


async def test_heartbeat_extends_the_lease(api: Api) -> None:
    job = await create(api)
    [claimed] = await claim(api, lease_seconds=5)
    r = await api.client.post(
        f"/api/v1/jobs/{job['id']}/heartbeat", json={"worker_id": "w1", "lease_seconds": 600}
    )
    assert r.status_code == 200
    assert r.json()["lease_expires_at"] > claimed["lease_expires_at"]
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/heartbeat", json={"worker_id": "x"})
    assert r.status_code == 409 and r.json()["status"] == "running"
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/heartbeat", json={"worker": "w1"})
    assert r.status_code == 422
    pending = await create(api, model_profile="vision")
    r = await api.client.post(f"/api/v1/jobs/{pending['id']}/heartbeat", json={"worker_id": "w1"})
    assert r.status_code == 409 and r.json()["status"] == "pending"


async def test_a_heartbeat_without_lease_seconds_keeps_the_claimed_lease_length(
    api: Api,
) -> None:
    """Claimed for 30 s, renewed without ``lease_seconds``: 30 s again, not the built-in
    workers' WORKER_LEASE_TIMEOUT (15 min), which a crash would then have to wait out."""
    job = await create(api, model_profile="short-lease")
    [claimed] = await claim(api, "ext", model_profile="short-lease", lease_seconds=30)
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/heartbeat", json={"worker_id": "ext"})
    assert r.status_code == 200, r.text
    before = datetime.fromisoformat(claimed["lease_expires_at"])
    after = datetime.fromisoformat(r.json()["lease_expires_at"])
    assert timedelta(0) <= after - before < timedelta(seconds=20)  # (the time between the two)


async def _status(api: Api, job_id: str) -> dict[str, Any]:
    r = await api.client.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_dead_external_workers_job_comes_back_with_no_worker_process(api: Api) -> None:
    """External workers only (no ai-service worker runs, so no worker's reaper): a job whose
    holder stops heartbeating is back to pending when its 1 s lease ends. The API runs the
    reaper too, and a lease it grants wakes it (its own interval, WORKER_LEASE_TIMEOUT/4, is
    minutes: this test would time out waiting for that)."""
    job = await create(api, model_profile="orphans")
    [held] = await claim(api, "gone", model_profile="orphans", lease_seconds=1)
    assert held["id"] == job["id"]

    async def back() -> dict[str, Any] | None:
        now = await _status(api, job["id"])
        return now if now["status"] == "pending" else None

    now = await until(back, timeout=GENEROUS, what="the expired lease to be reaped")
    assert now["attempts"] == 1 and now["worker_id"] is None
    [again] = await claim(api, "next", model_profile="orphans")
    assert again["id"] == job["id"] and again["attempts"] == 2


async def test_a_heartbeat_shortening_the_lease_brings_the_reaper_sooner(api: Api) -> None:
    """A lease cut short by a heartbeat (lease_seconds=1 after a 10-minute claim) is reaped
    when it ends, not at the reaper's next regular turn."""
    job = await create(api, model_profile="shortened")
    await claim(api, "w1", model_profile="shortened", lease_seconds=600)
    r = await api.client.post(
        f"/api/v1/jobs/{job['id']}/heartbeat", json={"worker_id": "w1", "lease_seconds": 1}
    )
    assert r.status_code == 200, r.text

    async def back() -> bool:
        return (await _status(api, job["id"]))["status"] == "pending"

    await until(back, timeout=GENEROUS, what="the shortened lease to be reaped")


async def test_fail_retryable_then_final_and_manual_retry(api: Api) -> None:
    job = await create(api, max_attempts=2)
    await claim(api)
    body = {"worker_id": "w1", "error_category": "timeout", "error_message": "slow",
            "retryable": True, "retry_after_seconds": 0}  # fmt: skip
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/fail", json=body)
    assert r.status_code == 200 and r.json()["status"] == "pending"
    assert r.json()["error_category"] == "timeout"
    # the backoff may put run_after a few seconds ahead; make it due for this test
    r = await api.client.post("/api/v1/jobs/retry", json={"ids": [job["id"]]})
    assert r.json()["count"] == 0  # pending jobs are not retried
    await api.client.post(f"/api/v1/jobs/{job['id']}/cancel")
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/retry")
    assert r.status_code == 409 and r.json()["status"] == "cancelled"

    job = await create(api)
    await claim(api)
    r = await api.client.post(
        f"/api/v1/jobs/{job['id']}/fail",
        json={"worker_id": "w1", "error_category": "invalid_input", "error_message": "bad"},
    )
    assert r.json()["status"] == "failed" and r.json()["finished_at"] is not None
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["attempts"] == 0
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/fail", json={"worker_id": "w1"})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "error_category"


async def test_claim_validation(api: Api) -> None:
    for body, field in [
        ({"model_profile": "p"}, "worker_id"),
        ({"worker_id": "w", "model_profile": "p", "limit": 0}, "limit"),
        ({"worker_id": "w", "model_profile": "p", "wait_seconds": 61}, "wait_seconds"),
        ({"worker_id": "w", "model_profile": []}, "model_profile"),
        ({"worker_id": "w", "model_profile": ["ok", "not ok"]}, "model_profile[1]"),
        ({"worker_id": "w", "model_profile": "p", "extra": 1}, "extra"),
    ]:
        r = await api.client.post("/api/v1/jobs/claim", json=body)
        assert r.status_code == 422, body
        assert r.json()["fields"][0]["field"] == field, r.json()


async def test_get_with_wait_returns_when_another_request_completes_the_job(api: Api) -> None:
    job = await create(api)
    [claimed] = await claim(api)
    result: dict[str, Any] = {}

    with anyio.fail_after(GENEROUS):
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_poll, api, job["id"], result)
            await api.hub.until_waiting(FINISHED_CHANNEL, job["id"])
            assert result == {}
            r = await api.client.post(
                f"/api/v1/jobs/{claimed['id']}/complete",
                json={"worker_id": "w1", "result": {"content": "done"}},
            )
            assert r.status_code == 200
    assert result["status"] == "completed" and result["result"] == {"content": "done"}


async def test_get_with_wait_returns_at_once_when_finished_and_state_when_time_is_up(
    api: Api,
) -> None:
    job = await create(api)
    await api.client.post(f"/api/v1/jobs/{job['id']}/cancel")
    with anyio.fail_after(GENEROUS):
        r = await api.client.get(f"/api/v1/jobs/{job['id']}", params={"wait_seconds": 60})
    assert r.json()["status"] == "cancelled"
    pending = await create(api)
    r = await api.client.get(f"/api/v1/jobs/{pending['id']}", params={"wait_seconds": 0.2})
    assert r.status_code == 200 and r.json()["status"] == "pending"
    r = await api.client.get(
        "/api/v1/jobs/0190a1b2-0000-7000-8000-000000000000", params={"wait_seconds": 5}
    )
    assert r.status_code == 404


async def test_claim_with_wait_is_woken_by_a_new_job(api: Api) -> None:
    got: list[dict[str, Any]] = []

    async def waiting_claim() -> None:
        got.extend(await claim(api, model_profile=["vision", "qwen2.5-14b"], wait_seconds=60))

    with anyio.fail_after(GENEROUS):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting_claim)
            await api.hub.until_waiting(profile_channel("qwen2.5-14b"))
            await api.hub.until_waiting(profile_channel("vision"))
            job = await create(api)
    assert [j["id"] for j in got] == [job["id"]]
    assert got[0]["status"] == "running"


async def test_claim_with_wait_takes_a_job_as_it_falls_due(api: Api) -> None:
    """Scheduled (``run_after``) and backed-off jobs become claimable with no NOTIFY: a
    waiting claim must wake when they fall due, not at the end of its 60 s wait."""
    profile = f"later-{uuid.uuid4().hex[:8]}"
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    job = await create(api, model_profile=profile, task_type="ext_task", run_after=soon)
    typed = {"model_profile": profile, "task_type": ["ext_task"], "wait_seconds": 60}
    with anyio.fail_after(GENEROUS):
        got = await claim(api, **typed)
    assert [j["id"] for j in got] == [job["id"]]
    # a retryable failure backs it off; the next waiting claim takes it once that has passed
    fail = {"worker_id": "w1", "error_category": "timeout", "retryable": True,
            "retry_after_seconds": 1}  # fmt: skip
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/fail", json=fail)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending"
    with anyio.fail_after(GENEROUS):
        again = await claim(api, model_profile=profile, wait_seconds=60)
    assert [(j["id"], j["attempts"]) for j in again] == [(job["id"], 2)]


async def test_a_job_due_but_not_taken_is_looked_at_again_ever_less_often(api: Api) -> None:
    """A due job the claim cannot take (rows held by another transaction, a lost race) must
    not have every waiting claim look again every 50 ms for its whole wait; and a database
    that cannot say when the next job is due leaves the wait to NOTIFY, not to a 503."""
    checks = dues = 0

    async def check() -> None:
        nonlocal checks
        checks += 1

    async def due_now() -> float:
        nonlocal dues
        dues += 1
        return 0.0

    got = await api.hub.wait_for([(profile_channel("held"), None)], check, 1.5, due_in=due_now)
    assert got is None
    # 50, 100, 200, 400, 800 ms, each jittered down to half at most (25, 50, 100, 200, 400,
    # 500 ms): at most 7 looks in 1.5 s (a slow machine makes fewer), where a fixed 50 ms made
    # 30. (The bound was 6, from the delays without their jitter: it failed once in a while.)
    assert dues <= 7 and checks <= 9, (dues, checks)

    async def unknown() -> float:
        raise DatabaseUnavailable("no connection")

    job_id: list[str] = []

    async def claimed() -> str | None:
        return job_id[0] if job_id else None

    async with anyio.create_task_group() as tg:
        results: list[str | None] = []

        async def waiting() -> None:
            keys = [(profile_channel("unknown-due"), None)]
            results.append(await api.hub.wait_for(keys, claimed, 60, due_in=unknown))

        with anyio.fail_after(GENEROUS):
            tg.start_soon(waiting)
            await api.hub.until_waiting(profile_channel("unknown-due"))
            job_id.append("taken")
            await create(api, model_profile="unknown-due")  # its NOTIFY wakes the wait
    assert results == ["taken"]


async def test_a_late_call_of_an_earlier_run_by_the_same_worker_is_refused(api: Api) -> None:
    """worker_id is often a host name, the same for every run: a call that names its run
    (the claimed job's started_at) acts on that run only, never on a newer claim of the job."""
    job = await create(api, model_profile=f"rerun-{uuid.uuid4().hex[:8]}")
    first = (await claim(api, "host-1", model_profile=job["model_profile"]))[0]
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/retry")
    assert r.status_code == 200, r.text
    second = (await claim(api, "host-1", model_profile=job["model_profile"]))[0]
    assert second["started_at"] != first["started_at"]
    run1 = {"worker_id": "host-1", "started_at": first["started_at"]}
    calls = [
        ("heartbeat", {**run1, "lease_seconds": 60}),
        ("complete", {**run1, "result": {"from": "run 1"}}),
        ("fail", {**run1, "error_category": "internal", "retryable": False}),
    ]
    for action, body in calls:
        r = await api.client.post(f"/api/v1/jobs/{job['id']}/{action}", json=body)
        assert r.status_code == 409, (action, r.text)
        assert r.json()["status"] == "running"
        assert "claimed again" in r.json()["detail"] or "ended" in r.json()["detail"]
    run2 = {"worker_id": "host-1", "started_at": second["started_at"]}
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/heartbeat", json=run2)
    assert r.status_code == 200, r.text
    r = await api.client.post(
        f"/api/v1/jobs/{job['id']}/complete", json={**run2, "result": {"from": "run 2"}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"] == {"from": "run 2"}


async def test_many_waiters_share_one_listen_connection(api: Api, db_url: str) -> None:
    jobs = [await create(api) for _ in range(5)]
    claimed = await claim(api, limit=5)
    done: list[str] = []

    async def waiting_get(job_id: str) -> None:
        r = await api.client.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": 60})
        done.append(r.json()["status"])

    with anyio.fail_after(GENEROUS):
        async with anyio.create_task_group() as tg:
            for j in jobs:
                tg.start_soon(waiting_get, j["id"])
            for j in jobs:
                await api.hub.until_waiting(FINISHED_CHANNEL, j["id"])
            with psycopg.connect(db_url) as conn:
                listeners = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'ai-service-listener'"
                ).fetchone()
            assert listeners == (1,)
            for j in claimed:
                await api.client.post(f"/api/v1/jobs/{j['id']}/complete", json={"worker_id": "w1"})
    assert done == ["completed"] * 5


async def test_waiters_survive_a_lost_listen_connection(api: Api, db_url: str) -> None:
    job = await create(api)
    await claim(api)
    result: dict[str, Any] = {}

    with anyio.fail_after(GENEROUS):
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_poll, api, job["id"], result)
            await api.hub.until_waiting(FINISHED_CHANNEL, job["id"])
            connects = api.hub.connects
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'ai-service-listener' "
                    "AND datname = current_database()"
                )
            # the job finishes while the hub may be reconnecting: the catch-up re-check or
            # the NOTIFY on the new connection must still deliver it
            await api.client.post(f"/api/v1/jobs/{job['id']}/complete", json={"worker_id": "w1"})
    assert result["status"] == "completed"
    with anyio.fail_after(GENEROUS):
        await api.hub.until_connected(connects + 1)


async def test_database_unavailable_is_503(db_url: str) -> None:
    # A URL with a password (the test server trusts local connections and ignores it unless
    # the URL already has one): the 503 must name no part of it, nor the driver's message.
    has_password = psycopg.conninfo.conninfo_to_dict(db_url).get("password")
    url = db_url if has_password else psycopg.conninfo.make_conninfo(db_url, password="pw-7f3c9e1a")
    params = psycopg.conninfo.conninfo_to_dict(url)
    async with running_api(url) as api:
        job = await create(api)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        r = await api.client.get(f"/api/v1/jobs/{job['id']}")
        assert r.status_code == 503
        assert r.json()["error"] == "database_unavailable"
        parts = ("password", "user", "dbname", "host", "hostaddr", "port")
        told = [str(params[k]) for k in parts if params.get(k)]
        told += ["administrator command", "server closed"]  # words of psycopg's errors
        assert [t for t in told if t.lower() in r.text.lower()] == [], r.text
        # the pool replaces the dead connections: the service recovers by itself
        with anyio.fail_after(GENEROUS):
            while (await api.client.get(f"/api/v1/jobs/{job['id']}")).status_code != 200:  # noqa: ASYNC110
                await anyio.sleep(0.01)  # retries until recovered (an outcome), bounded above


async def test_client_hanging_up_stops_a_waiting_claim(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=90) as other:
        with anyio.fail_after(GENEROUS):
            async with anyio.create_task_group() as tg:

                async def hang_up() -> None:
                    await api.hub.until_waiting(profile_channel("hangup"))
                    tg.cancel_scope.cancel()

                tg.start_soon(hang_up)
                body = {"worker_id": "gone", "model_profile": "hangup", "wait_seconds": 60}
                await other.post("/api/v1/jobs/claim", json=body)
    with anyio.fail_after(GENEROUS):
        while api.hub._waiters.get(profile_channel("hangup")):  # noqa: ASYNC110
            await anyio.sleep(0.01)  # until the server dropped the waiter (an outcome)
    await create(api, model_profile="hangup")
    # the job was not leased to the caller that went away
    r = await api.client.get("/api/v1/jobs", params={"model_profile": "hangup"})
    assert [j["status"] for j in r.json()["items"]] == ["pending"]


async def test_a_result_nested_too_deep_is_refused_and_the_job_stays_running(api: Api) -> None:
    job = await create(api)
    [claimed] = await claim(api)
    deepest: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        deepest = [deepest]
    url = f"/api/v1/jobs/{claimed['id']}/complete"
    r = await api.client.post(url, json={"worker_id": "w1", "result": [deepest]})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"
    assert [f["field"] for f in r.json()["fields"]] == ["result"]
    assert (await api.client.get(f"/api/v1/jobs/{job['id']}")).json()["status"] == "running"
    r = await api.client.post(url, json={"worker_id": "w1", "result": deepest})
    assert r.status_code == 200 and r.json()["result"] == deepest


async def test_stopping_the_server_answers_waiting_long_polls_instead_of_cutting_them(
    api: Api,
) -> None:
    """Rollouts stop API pods with long-polls open. They were cut off after uvicorn's
    graceful-shutdown timeout (10 s) with a plain-text 500; now they answer at once with what
    they have: the job as it stands, no claim."""
    job = await create(api)
    got: dict[str, Any] = {}
    claimed: list[list[dict[str, Any]]] = []

    async def claim_waiting() -> None:
        claimed.append(await claim(api, model_profile="vision", wait_seconds=60))

    with anyio.fail_after(30):  # bounds a hang; the waits asked for are 60 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_poll, api, job["id"], got)
            tg.start_soon(claim_waiting)
            await api.hub.until_waiting(FINISHED_CHANNEL, job["id"])
            await api.hub.until_waiting(profile_channel("vision"))
            api.server.should_exit = True
    assert got["id"] == job["id"] and got["status"] == "pending"
    assert claimed == [[]]


async def test_a_claim_whose_caller_hung_up_hands_its_jobs_back(
    api: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller gives up (a client timeout) while its claim waits on the database: the
    claim commits after, and its jobs went to nobody. They stayed leased for the whole lease
    (15 minutes), an attempt spent — a one-attempt job failed as lease_expired unrun."""
    from service.api import deps

    saw_gone = anyio.Event()
    watch = deps.watch_disconnect

    async def watching(request: Any, gone: anyio.Event) -> None:
        await watch(request, gone)
        saw_gone.set()

    monkeypatch.setattr(deps, "watch_disconnect", watching)
    job = await create(api, model_profile="impatient", max_attempts=1)
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE ai_jobs IN ACCESS EXCLUSIVE MODE")
        async with httpx.AsyncClient(base_url=api.url, timeout=90) as gone_client:
            body = {"worker_id": "impatient", "model_profile": "impatient"}
            with anyio.fail_after(GENEROUS), anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(partial(gone_client.post, "/api/v1/jobs/claim", json=body))
                    await until(
                        lambda: blocked_on_lock(db_url), what="the claim waiting on the lock"
                    )
                    scope.cancel()  # the client gives up
        with anyio.fail_after(GENEROUS):
            await saw_gone.wait()
        locker.rollback()  # the claim goes through now
    row = await until(
        lambda: handed_back(api, job), what="the job back to pending, the attempt not counted"
    )
    assert row["attempts"] == 0 and row["worker_id"] is None


async def test_a_claim_that_fails_on_a_later_profile_hands_back_the_earlier_ones(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim of two profiles: the first committed, the second's statement failed. The
    answer (503: "nothing was changed") carried no jobs, so the first profile's go back."""
    from service.jobs import JobRepository

    first = await create(api, model_profile="aa-first")
    await create(api, model_profile="zz-second")
    claim_one = JobRepository.claim_for_reply

    async def failing(self: JobRepository, profile: str, *args: Any, **kw: Any) -> Any:
        if profile == "zz-second":
            raise DatabaseUnavailable("the second profile's claim was cut off")
        return await claim_one(self, profile, *args, **kw)

    monkeypatch.setattr(JobRepository, "claim_for_reply", failing)
    body = {"worker_id": "w-multi", "model_profile": ["aa-first", "zz-second"], "limit": 4}
    r = await api.client.post("/api/v1/jobs/claim", json=body)
    assert r.status_code == 503, r.text
    row = await handed_back(api, first)
    assert row is not None, row
    assert row["attempts"] == 0 and row["worker_id"] is None


def blocked_on_lock(db_url: str) -> bool:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE '%%ai_jobs%%'"
        ).fetchone()
    return bool(row and row[0])


async def handed_back(api: Api, created: dict[str, Any]) -> dict[str, Any] | None:
    """The job, once a claim took it and released it (pending, touched since created)."""
    job: dict[str, Any] = (await api.client.get(f"/api/v1/jobs/{created['id']}")).json()
    moved = job["status"] == "pending" and job["updated_at"] != created["updated_at"]
    return job if moved else None


async def test_a_request_arriving_while_its_channel_is_unlistened_still_gets_the_notify(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub UNLISTENs a channel idle for a while; a claim that subscribed to it during
    that round trip took it for listened, asked for nothing, and missed its NOTIFY (woken
    only at the end of its wait, up to 60 s)."""
    from service.api import hub as api_hub
    from service.db.listen import ListenConnection

    monkeypatch.setattr(api_hub, "IDLE_UNLISTEN", 0.0)
    quiet, other = profile_channel("quiet"), profile_channel("other")
    in_flight, go_on, done = anyio.Event(), anyio.Event(), anyio.Event()
    unlisten = ListenConnection.unlisten

    async def slow_unlisten(self: ListenConnection, *channels: str) -> None:
        if quiet in channels and not in_flight.is_set():
            in_flight.set()
            await go_on.wait()  # the round trip, held open while a request subscribes
            await unlisten(self, *channels)
            done.set()
        else:
            await unlisten(self, *channels)

    monkeypatch.setattr(ListenConnection, "unlisten", slow_unlisten)
    hub = api_hub.NotifyHub(db_url)
    with anyio.fail_after(GENEROUS):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            async with hub.subscribe([(quiet, None)]) as first:
                await hub.until_listening(first.channels)
            # quiet is idle now; a request on another channel makes the hub sync
            async with hub.subscribe([(other, None)]):
                await in_flight.wait()
                async with hub.subscribe([(quiet, None)]) as late:
                    go_on.set()
                    await hub.until_listening(late.channels)
                    await done.wait()
                    async with await psycopg.AsyncConnection.connect(
                        db_url, autocommit=True
                    ) as conn:
                        await conn.execute("SELECT pg_notify(%s, '')", [quiet])
                    await late.wait()
            tg.cancel_scope.cancel()


async def test_a_claims_answer_stops_before_its_inputs_pass_the_reply_budget(api: Api) -> None:
    """The answer holds the jobs whole, and `limit` may be 1,000: twenty 8 MiB inputs took an
    API process from 157 to 594 MiB. Like a page of GET /jobs, a claim stops before its
    inputs pass 16 MiB as stored; the first job always comes, the rest stay pending."""
    import base64
    import os

    from service.jobs.repository import CLAIM_REPLY_BYTES

    size = CLAIM_REPLY_BYTES * 7 // 16  # 7 MiB a job, incompressible: 3 fit, a 4th would not
    ids = []
    for _ in range(4):
        blob = base64.b64encode(os.urandom(size * 3 // 4)).decode()
        ids.append((await create(api, model_profile="big", input={"blob": blob}))["id"])
    for task_type in (None, "llm_chat"):  # the plain claim, and the one by task type
        typed = {"task_type": task_type} if task_type else {}
        first = await claim(api, "w-big", model_profile="big", limit=10, **typed)
        assert [j["id"] for j in first] == ids[:3]
        rest = await claim(api, "w-big", model_profile="big", limit=10, **typed)
        assert [j["id"] for j in rest] == ids[3:]
        r = await api.client.post("/api/v1/jobs/retry", json={"model_profile": ["big"]})
        assert r.status_code == 200, r.text
