"""The KEDA ScaledObjects' queries, run against a real database: they count a profile's
running jobs and its pending jobs that are due, nothing else. Running jobs must count, or the
HPA sees ~0 while every pod is busy (workers claim at once) and stops busy pods."""

from __future__ import annotations

import psycopg

from service.jobs import JobRepository, NewJob
from tests.unit.test_deploy_kustomize import K8S, load_yaml_docs


def scaler_queries() -> dict[str, str]:
    docs = load_yaml_docs(K8S / "base" / "keda.yaml")
    return {
        d["metadata"]["labels"]["ai-service.io/profile"]: d["spec"]["triggers"][0]["metadata"][
            "query"
        ]
        for d in docs
        if d["kind"] == "ScaledObject"
    }


async def test_scaler_counts_running_and_due_pending(repo: JobRepository, db_url: str) -> None:
    queries = scaler_queries()
    assert set(queries) == {"qwen2.5-14b", "voxtral-small"}
    for profile in queries:
        for _ in range(5):
            await repo.create(NewJob(owner_service="t", task_type="x", model_profile=profile))
        await repo.claim(profile, "w1", limit=2, lease_seconds=60)  # 2 running, 3 pending
        done = await repo.claim(profile, "w1", limit=1, lease_seconds=60)
        await repo.complete(done[0].id, "w1", {"ok": True})  # 1 completed, 2 pending
    with psycopg.connect(db_url, autocommit=True) as conn:
        # one pending job of each profile deferred: not runnable yet, not counted
        conn.execute(
            "UPDATE ai_jobs SET run_after = now() + interval '1 hour' WHERE id IN "
            "(SELECT DISTINCT ON (model_profile) id FROM ai_jobs WHERE status = 'pending' "
            "ORDER BY model_profile, id)"
        )
        for profile, query in queries.items():
            assert conn.execute(query).fetchone() == (3,), profile  # 2 running + 1 due
