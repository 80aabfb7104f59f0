"""A job one worker claims twice (retried or reaped while it ran, then claimed again by the same
process) has two runs; only the newer one may store its outcome. Runs are named by their
``started_at``. Real rows on a real PostgreSQL, claimed the way a worker claims them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service.jobs import Job, JobRepository, NewJob, StateConflict
from service.worker.completer import Completer
from service.worker.status import ProfileStats, WorkerStatus

PROFILE = "runs-q"


async def two_runs(repo: JobRepository) -> tuple[Job, Job]:
    """Run 1 claimed by ``w``; an operator retries it while it runs; ``w`` claims run 2."""
    await repo.create(NewJob(owner_service="t", task_type="llm_chat", model_profile=PROFILE))
    [first] = await repo.claim(PROFILE, "w", limit=1, lease_seconds=60)
    await repo.retry(first.id)
    [second] = await repo.claim(PROFILE, "w", limit=1, lease_seconds=60)
    assert second.id == first.id and second.started_at != first.started_at
    return first, second


async def test_an_earlier_runs_result_or_failure_does_not_settle_the_newer_run(
    repo: JobRepository,
) -> None:
    first, second = await two_runs(repo)
    assert await repo.complete_many("w", [(first.id, {"run": 1})], [first.started_at]) == set()
    with pytest.raises(StateConflict):
        await repo.fail(
            first.id, "w", error_category="timeout", error_message="late", retryable=False,
            started_at=first.started_at,
        )  # fmt: skip
    assert (await repo.get(first.id)).status == "running"
    held = await repo.complete_many("w", [(second.id, {"run": 2})], [second.started_at])
    assert held == {second.id}
    assert (await repo.get(first.id)).result == {"run": 2}


async def test_a_newer_runs_result_queued_during_a_flush_is_kept(
    repo: JobRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run 1's result is being stored when run 2 finishes and queues its own: settling run 1
    (refused: not its run any more) must not drop run 2's result from the queue."""
    first, second = await two_runs(repo)
    completer = Completer(repo, "w", WorkerStatus("w", {PROFILE: ProfileStats(capacity=4)}))
    await completer.submit(first, msgspec.Raw(b'{"run": 1}'))
    real = repo.complete_many

    async def newer_result_meanwhile(worker_id: str, items: Any, started: Any = None) -> Any:
        monkeypatch.setattr(repo, "complete_many", real)
        await completer.submit(second, msgspec.Raw(b'{"run": 2}'))
        return await real(worker_id, items, started)

    monkeypatch.setattr(repo, "complete_many", newer_result_meanwhile)
    assert await completer.flush_once()
    assert completer.queued_jobs() == [second]
    assert await completer.flush_once()
    stored = await repo.get(first.id)
    assert (stored.status, stored.result) == ("completed", {"run": 2})
