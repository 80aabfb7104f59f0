"""``/metrics`` with METRICS_PORT set: the API, a worker running the real LLM handler against
the simulator, and a dedicated listener, all on a real PostgreSQL; the exposition is read with
prometheus-client's parser. Waits are on outcomes; deadlines only bound a hang.

The MeterProvider is process-wide (OpenTelemetry allows one), so the profiles here are unique
to this module and every number asserted is this test's own.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.jobs import JobRepository, NewJob
from service.jobs.reaper import Reaper
from service.metrics.export import setup_metrics
from service.simulator import serve_simulator
from service.worker.main import Worker
from service.worker.registry import build_registry
from tests.helpers import free_port
from tests.integration.api_server import running_api
from tests.integration.test_worker_runtime import idle, settings, until

Samples = list[tuple[str, dict[str, str], float]]

PROFILE = f"metrics-{uuid.uuid4().hex[:8]}"  # served: the LLM model of the worker
WAITING = f"waiting-{uuid.uuid4().hex[:8]}"  # no worker serves it: the queue gauges see it
DEAD = f"dead-{uuid.uuid4().hex[:8]}"  # claimed by a worker that died: the reaper takes them
EXTERNAL = f"external-{uuid.uuid4().hex[:8]}"  # served by an external worker through the API
FAST = {"latency_ms": 1.0, "per_token_ms": 0.0, "per_audio_second_ms": 0.0}


# What Prometheus 3 sends; it refuses a content type it cannot parse (a parameter twice).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


def parameters(content_type: str) -> list[str]:
    return [p.split("=")[0].strip().lower() for p in content_type.split(";")[1:]]


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    r = await client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    asked = await client.get(url, headers={"accept": PROMETHEUS_ACCEPT})
    kind = asked.headers["content-type"]
    assert kind.startswith("application/openmetrics-text; version=1.0.0"), kind
    assert len(parameters(kind)) == len(set(parameters(kind))), kind
    assert asked.text.rstrip().endswith("# EOF")
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels`` (None: no sample)."""
    found = [v for n, lb, v in samples if n == name and labels.items() <= lb.items()]
    return sum(found) if found else None


async def test_metrics_endpoints_serve_the_job_counters(repo: JobRepository, db_url: str) -> None:
    own_port = free_port()
    assert setup_metrics("api", Settings(metrics_port=own_port, http_host="127.0.0.1"))
    for _ in range(3):  # queued before the API starts: its first queue sample sees them
        await repo.create(NewJob(owner_service="t", task_type="llm_chat", model_profile=WAITING))

    async with serve_simulator(chat_models=(PROFILE,), **FAST) as sim:
        s = settings(metrics_port=0, llm_base_url=sim.url, llm_model=PROFILE)
        registry, clients = build_registry(s)
        worker = Worker(s, db_url, [PROFILE], registry, clients=clients)
        async with running_api(db_url, s) as api, anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await until(lambda: idle(worker) and worker.http_port, what="the worker to idle")
            worker_url = f"http://127.0.0.1:{worker.http_port}/metrics"
            body: dict[str, Any] = {"owner_service": "telephony", "model_profile": PROFILE}
            ok = await api.client.post(
                "/api/v1/jobs", json={**body, "task_type": "llm_chat", "input": {"user": "hi"}}
            )
            assert ok.status_code == 201
            # The API refuses this input (422); a row can still arrive by another path
            # (SQL, an API whose LLM_MODEL differs), and the worker fails it.
            bad, _ = await repo.create(
                NewJob(owner_service="telephony", task_type="llm_chat", model_profile=PROFILE,
                       input={"messages": "not a list"})
            )  # fmt: skip
            for job_id, want in ((ok.json()["id"], "completed"), (str(bad.id), "failed")):
                got = await api.client.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": 30})
                assert got.json()["status"] == want, got.json()

            async def counted() -> Samples | None:
                w = await scrape(api.client, worker_url)
                done = value(w, "ai_service_jobs_completed_total", model_profile=PROFILE)
                return w if done == 1 else None

            w = await until(counted, what="the completion to be counted")
            # two jobs whose worker died: one with an attempt left, one without
            for attempts in (2, 1):
                await repo.create(
                    NewJob(owner_service="t", task_type="llm_chat", model_profile=DEAD,
                           max_attempts=attempts)
                )  # fmt: skip
            assert len(await repo.claim(DEAD, "dead-worker", limit=2, lease_seconds=60)) == 2
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                await conn.execute(
                    "UPDATE ai_jobs SET lease_expires_at = now() - interval '1 second' "
                    "WHERE model_profile = %s",
                    (DEAD,),
                )
            assert await Reaper(repo, lease_seconds=60).reap_once() == 2
            reaped = await scrape(api.client, worker_url)
            a = await scrape(api.client, f"{api.url}/metrics")
            own = await scrape(api.client, f"http://127.0.0.1:{own_port}/metrics")
            worker.stop()

    job = {"model_profile": PROFILE, "task_type": "llm_chat"}
    # one registry per process: the worker's, the API's and the dedicated listener agree
    for samples in (w, a, own):
        assert value(samples, "ai_service_jobs_created_total", **job) == 1  # (API only)
        assert value(samples, "ai_service_jobs_completed_total", **job) == 1
        failed = value(
            samples,
            "ai_service_jobs_failed_total",
            **job,
            error_category="invalid_input",
            outcome="final",
        )
        assert failed == 1
    # a lease that expired is a failed attempt: requeued (retry) or out of attempts (final)
    lost = {"model_profile": DEAD, "error_category": "lease_expired"}
    assert value(reaped, "ai_service_jobs_failed_total", **lost, outcome="retry") == 1
    assert value(reaped, "ai_service_jobs_failed_total", **lost, outcome="final") == 1
    # the counters alerts watch for a first event exist at 0 from the start (increase()
    # would not count a series that appeared at 1)
    for outcome in ("requeued", "failed"):
        assert value(w, "ai_service_leases_reaped_total", outcome=outcome) == 0
        assert value(reaped, "ai_service_leases_reaped_total", outcome=outcome) == 1
    assert value(w, "ai_service_listener_reconnects_total") == 0
    assert value(w, "ai_service_leases_renewed_total") == 0
    assert value(w, "ai_service_leases_lost_total", model_profile=PROFILE) == 0
    assert value(w, "ai_service_jobs_pickup_latency_seconds_count", **job) == 2
    assert value(w, "ai_service_jobs_duration_seconds_count", **job, outcome="completed") == 1
    assert value(w, "ai_service_jobs_duration_seconds_count", **job, outcome="failed") == 1
    assert value(w, "ai_service_jobs_in_flight", model_profile=PROFILE) == 0
    assert value(w, "ai_service_worker_capacity", model_profile=PROFILE) == s.claim_limit(PROFILE)

    chat = {"gen_ai_operation_name": "chat", "gen_ai_request_model": PROFILE}
    assert value(w, "gen_ai_client_operation_duration_seconds_count", **chat) == 1
    assert value(w, "gen_ai_client_token_usage_count", **chat, gen_ai_token_type="input") == 1
    out = value(w, "gen_ai_client_token_usage_sum", **chat, gen_ai_token_type="output")
    assert out is not None and out > 0
    assert value(w, "gen_ai_client_token_usage_count", gen_ai_response_model=PROFILE) == 2

    assert value(a, "ai_service_queue_pending", model_profile=WAITING) == 3
    assert value(a, "ai_service_queue_due", model_profile=WAITING) == 3
    age = value(a, "ai_service_queue_oldest_pending_age_seconds", model_profile=WAITING)
    assert age is not None and age >= 0
    # a served profile that never had a pending job still has its series (an idle system's
    # dashboard lists its profiles and shows 0, not "No data")
    assert value(a, "ai_service_queue_pending", model_profile="voxtral-small") == 0


async def test_external_workers_claims_and_outcomes_are_counted(db_url: str) -> None:
    """A profile served only by external workers (claim / complete / fail over HTTP) shows its
    pickups, completions and failures like one served by the built-in workers: otherwise its
    dashboard reads "created, never finished" and the failure alerts cannot fire for it."""
    setup_metrics("api", Settings(metrics_port=free_port(), http_host="127.0.0.1"))
    s = settings(metrics_port=0)
    async with running_api(db_url, s) as api:
        body = {"owner_service": "t", "task_type": "tg_analysis", "model_profile": EXTERNAL}
        for attempts in (1, 1, 1, 2):
            r = await api.client.post("/api/v1/jobs", json={**body, "max_attempts": attempts})
            assert r.status_code == 201, r.text
        claim = {"worker_id": "ext-1", "model_profile": EXTERNAL, "limit": 10}
        got = await api.client.post("/api/v1/jobs/claim", json=claim)
        jobs = sorted(got.json()["jobs"], key=lambda j: j["max_attempts"])
        assert len(jobs) == 4, got.text
        done = {"worker_id": "ext-1", "result": {"ok": True}}
        for j in jobs[:2]:
            r = await api.client.post(f"/api/v1/jobs/{j['id']}/complete", json=done)
            assert r.status_code == 200, r.text
        for j, category in ((jobs[2], "bad_audio"), (jobs[3], "timeout")):
            fail = {"worker_id": "ext-1", "error_category": category, "retryable": True}
            r = await api.client.post(f"/api/v1/jobs/{j['id']}/fail", json=fail)
            assert r.status_code == 200, r.text
        # a late completion (the job is no longer held) is a 409 and counts nothing
        late = await api.client.post(f"/api/v1/jobs/{jobs[0]['id']}/complete", json=done)
        assert late.status_code == 409
        a = await scrape(api.client, f"{api.url}/metrics")

    job = {"model_profile": EXTERNAL, "task_type": "tg_analysis"}
    assert value(a, "ai_service_jobs_pickup_latency_seconds_count", **job) == 4
    assert value(a, "ai_service_jobs_completed_total", **job) == 2
    failed = "ai_service_jobs_failed_total"
    assert value(a, failed, **job, error_category="bad_audio", outcome="final") == 1
    assert value(a, failed, **job, error_category="timeout", outcome="retry") == 1


async def test_no_metrics_route_without_metrics_port(db_url: str) -> None:
    async with running_api(db_url, Settings(db_pool_size=4)) as api:
        assert (await api.client.get("/metrics")).status_code == 404


async def test_every_process_that_reaps_starts_its_reaped_series_at_zero(
    repo: JobRepository, monkeypatch: Any
) -> None:
    """The API runs a reaper too, and only workers started these series: a lease the API
    reaped (every worker external, or the only one OOM-killed) appeared at 1, which
    ``increase()`` does not count, and AiServiceWorkersLost stayed silent."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from service import metrics
    from service.metrics import build_instruments, names

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    monkeypatch.setattr(metrics, "_i", build_instruments(provider.get_meter("t"), lambda m: []))

    def reaped() -> dict[str, float]:
        data = reader.get_metrics_data()
        return {
            str((point.attributes or {})["outcome"]): point.value
            for rm in (data.resource_metrics if data else [])
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == names.LEASES_REAPED.name
            for point in m.data.data_points
        }

    async with anyio.create_task_group() as tg:
        tg.start_soon(Reaper(repo, lease_seconds=3600).run)  # as the API starts it
        got = await until(lambda: reaped() or None, what="the reaped series")
        tg.cancel_scope.cancel()
    provider.shutdown()
    assert got == {"requeued": 0, "failed": 0}
