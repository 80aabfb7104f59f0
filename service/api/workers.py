"""Worker-facing routes, for external workers in any language: claim (with long-poll),
heartbeat, complete and fail. Every call after the claim names the ``worker_id`` that holds the
lease, and should name its run (the claimed job's ``started_at``: worker ids are often host
names, the same across runs); a late or foreign call is a 409 carrying the job's current
status, never an overwrite.

Their claims, completions and failures are counted in the same metrics as the built-in
workers' (pickup latency, jobs completed / failed): otherwise a profile served only by external
workers shows jobs created and never finished, and its failure alerts cannot fire.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import anyio
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from service import metrics
from service.api.deps import unless_gone
from service.api.errors import invalid, responses
from service.api.hub import NotifyHub
from service.api.schemas import (
    ClaimRequest,
    ClaimResult,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
)
from service.config import Settings
from service.db import DatabaseUnavailable
from service.db.listen import profile_channel
from service.jobs import Job, JobRepository
from service.jobs.model import MAX_JSON_DEPTH, too_deep
from service.jobs.reaper import Reaper
from service.jobs.repository import CLAIM_REPLY_BYTES
from service.logs import reason

log = logging.getLogger("ai_service.api.workers")

HAND_BACK_TIMEOUT = 10.0  # longest a claim's error answer waits to release what it took
TYPED_RETRIES = 2  # an empty claim by task type looks again this many times ...
TYPED_RETRY_PAUSE = 0.01  # ... this many seconds apart (a claim lasts about a millisecond)


@post(
    "/jobs/claim",
    status_code=200,
    summary="Claim due jobs under a lease",
    description="Leases up to `limit` due jobs of the given profile(s), highest priority first, "
    "of the given `task_type`(s) only when set (list those in the built-in workers' "
    "`WORKER_EXTERNAL_TASK_TYPES` so they leave them to you). With `wait_seconds` > 0 and "
    "nothing due, waits until a job arrives (woken by NOTIFY) or the time is up; `jobs` may "
    "be empty.",
    responses=responses(422, body=True),
    tags=["workers"],
)
async def claim_jobs(
    data: JSONBody[ClaimRequest],
    request: Request[Any, Any, Any],
    repo: NamedDependency[JobRepository],
    hub: NamedDependency[NotifyHub],
    reaper: NamedDependency[Reaper],
    settings: NamedDependency[Settings],
) -> ClaimResult:
    lease = data.lease_seconds or settings.worker_lease_timeout
    profiles, only = data.profiles(), data.task_types()

    async def hand_back(jobs: list[Job]) -> None:
        """Release jobs no reply will carry (attempt not counted), so they do not sit leased
        until ``lease`` runs out; if the database cannot take them, the lease does that."""
        if not jobs:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(HAND_BACK_TIMEOUT):
            try:
                await repo.release(data.worker_id, [j.id for j in jobs])
            except DatabaseUnavailable as exc:
                log.warning(
                    "%d claimed job(s) of worker %r stay leased for %gs: %s",
                    len(jobs), data.worker_id, lease, reason(exc),
                )  # fmt: skip

    async def claim_once(gone: anyio.Event | None) -> list[Job]:
        jobs: list[Job] = []
        if gone is not None and gone.is_set():
            return jobs
        budget = CLAIM_REPLY_BYTES  # the answer holds the jobs whole: bounded like a page
        try:
            for profile in profiles:
                left = data.limit - len(jobs)
                if left <= 0 or budget <= 0:
                    break
                claimed, spent = await repo.claim_for_reply(
                    profile,
                    data.worker_id,
                    limit=left,
                    lease_seconds=lease,
                    only_types=only,
                    max_bytes=budget,
                )
                jobs += claimed
                budget -= spent
        except BaseException:  # a later profile's claim failed, or the request was cancelled:
            await hand_back(jobs)  # the answer is an error, so the earlier ones go back
            raise
        finally:  # and if even that fails, their leases end on time
            reaper.lease_ends_in(lease)
        if gone is not None and gone.is_set():  # the client hung up while it ran
            await hand_back(jobs)
            return []
        metrics.jobs_claimed(jobs)
        return jobs

    async def claim(gone: anyio.Event | None) -> list[Job] | None:
        jobs = await claim_once(gone)
        # A claim by task type locks the head of every (type, priority) group it reads and
        # keeps the best; one running meanwhile may find every due job locked for that moment
        # and come back empty, and no NOTIFY would come for those jobs: look again shortly.
        for _ in range(TYPED_RETRIES if only is not None else 0):
            if jobs:
                break
            await anyio.sleep(TYPED_RETRY_PAUSE)
            jobs = await claim_once(gone)
        return jobs or None

    async def due_in() -> float | None:
        """Until the earliest pending job this claim could take is due (no NOTIFY then)."""
        times = [await repo.seconds_until_due(p, only_types=only) for p in profiles]
        return min((t for t in times if t is not None), default=None)

    keys = [(profile_channel(p), None) for p in profiles]
    jobs = await unless_gone(
        request,
        lambda gone: hub.wait_for(
            keys, lambda: claim(gone), data.wait_seconds, gone=gone, due_in=due_in
        ),
    )
    return ClaimResult(jobs=jobs or [])


# ``{job_id:str}``: a malformed id is a 422 naming job_id, as in ``jobs.py``.
@post(
    "/jobs/{job_id:str}/heartbeat",
    status_code=200,
    summary="Extend the lease of a running job",
    responses=responses(404, 409, 422, body=True),
    tags=["workers"],
)
async def heartbeat_job(
    job_id: FromPath[UUID],
    data: JSONBody[HeartbeatRequest],
    repo: NamedDependency[JobRepository],
    reaper: NamedDependency[Reaper],
    settings: NamedDependency[Settings],
) -> Job:
    # without lease_seconds, as long as the claim (or the last heartbeat) granted
    held = await repo.heartbeat(
        data.worker_id,
        [job_id],
        lease_seconds=data.lease_seconds,
        default_seconds=settings.worker_lease_timeout,
        started_at=data.started_at,
    )
    if job_id not in held:
        raise await repo.refusal(job_id, "heartbeat", data.worker_id)
    reaper.lease_ends_in(held[job_id])  # (seconds left on the database's clock)
    return await repo.get(job_id)


@post(
    "/jobs/{job_id:str}/complete",
    status_code=200,
    summary="Store a job's result",
    responses=responses(404, 409, 422, body=True),
    tags=["workers"],
)
async def complete_job(
    job_id: FromPath[UUID], data: JSONBody[CompleteRequest], repo: NamedDependency[JobRepository]
) -> Job:
    if too_deep(data.result):  # (it would be stored, then break every read of the job)
        raise invalid("result", f"nested deeper than {MAX_JSON_DEPTH} levels")
    job = await repo.complete(job_id, data.worker_id, data.result, started_at=data.started_at)
    metrics.job_completed(job)
    return job


@post(
    "/jobs/{job_id:str}/fail",
    status_code=200,
    summary="Record a failed attempt",
    description="`retryable` failures with attempts left go back to pending after a backoff; "
    "others fail the job for good.",
    responses=responses(404, 409, 422, body=True),
    tags=["workers"],
)
async def fail_job(
    job_id: FromPath[UUID], data: JSONBody[FailRequest], repo: NamedDependency[JobRepository]
) -> Job:
    job = await repo.fail(
        job_id,
        data.worker_id,
        error_category=data.error_category,
        error_message=data.error_message,
        retryable=data.retryable,
        retry_after=data.retry_after_seconds,
        started_at=data.started_at,
    )
    metrics.job_failed(job, data.error_category, final=job.status != "pending")
    return job


ROUTES = [claim_jobs, heartbeat_job, complete_job, fail_job]
