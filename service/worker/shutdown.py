"""Graceful shutdown: stop claiming (the claim loops exit), let in-flight jobs finish within
``WORKER_SHUTDOWN_GRACE``, cancel what is still running, store queued results, and hand the
unfinished jobs back to pending without counting the attempt, so nothing stays ``running``
with a dead owner. After a second signal the same final writes run, bounded, on what is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from uuid import UUID

import anyio

from service.backoff import Backoff
from service.db import DatabaseUnavailable
from service.jobs import Job, JobRepository
from service.logs import id_list
from service.worker.cancellation import Running
from service.worker.completer import Completer
from service.worker.status import ProfileStats, WorkerStatus

log = logging.getLogger("ai_service.worker.shutdown")

FINAL_WRITES_TIMEOUT = 10.0  # most time the last flush + release may take after the grace


async def drain(running: Running, deadline: float) -> None:
    """Wait for running jobs until the monotonic ``deadline``; then cancel the rest."""
    with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
        await running.wait_empty()
    if len(running):
        log.warning("shutdown grace over: releasing %d unfinished jobs", len(running))
        running.cancel_all("shutdown")


async def release(
    repo: JobRepository,
    worker_id: str,
    unfinished: Callable[[], list[Job]],
    status: WorkerStatus,
    *,
    results: Completer,
) -> None:
    """Hand the ``unfinished()`` jobs back to pending (attempt not counted); retries while the
    database is down (bound it with a cancel scope). Each try first stores what results it
    can: when the database comes back during the release, a result in hand is kept, not
    thrown away with its job released to run again."""
    backoff = Backoff(0.05, 1.0)
    while True:
        if len(results):
            await results.flush_pass()
        jobs = unfinished()
        if not jobs:
            return
        try:
            released = await repo.release(worker_id, [j.id for j in jobs])
            break
        except DatabaseUnavailable as exc:
            log.warning("releasing %d jobs failed, will retry: %s", len(jobs), exc)
            await anyio.sleep(backoff.next())
        except Exception:  # not known to pass, but the jobs are stranded if this gives up
            log.exception("releasing %d jobs failed, will retry", len(jobs))
            await anyio.sleep(backoff.next())
    for job in jobs:
        if job.id in released:
            status.profiles[job.model_profile].released += 1
    log.info("released %d jobs to pending", len(released))


def report_stranded(jobs: Sequence[Job], lease_seconds: float) -> None:
    """The final release did not get through (the database did not answer in time): say so,
    naming the jobs, since they stay ``running`` under this dead worker until their leases
    expire and then run again (the attempt counted), and their results are not stored."""
    if not jobs:
        return
    log.error(
        "could not hand back %d jobs before exiting (the database did not answer): they stay "
        "running until their leases expire (at most %gs; WORKER_LEASE_TIMEOUT), then run "
        "again: %s",
        len(jobs),
        lease_seconds,
        id_list(j.id for j in jobs),
    )


async def release_orphans(
    repo: JobRepository,
    worker_id: str,
    profile: str,
    stats: ProfileStats,
    known: Sequence[UUID] = (),
) -> None:
    """Hand back ``profile``'s jobs the database says this process holds but it does not
    know (``known``): those of a claim that committed while its reply was lost."""
    released = await repo.release_orphans(worker_id, profile, known)
    if released:
        stats.released += len(released)
        log.warning(
            "released %d %s jobs claimed by a claim whose reply was lost", len(released), profile
        )


async def release_unknown(repo: JobRepository, worker_id: str, status: WorkerStatus) -> None:
    """After the final release, the orphans of every profile: a claim whose reply was lost
    as the worker stopped (no claim loop runs again to release them). The worker id is
    unique to this process, so nothing of another is touched."""
    for profile, stats in status.profiles.items():
        try:
            await release_orphans(repo, worker_id, profile, stats)
        except Exception as exc:  # DatabaseUnavailable or anything else: the leases remain
            log.warning("releasing %s jobs left by a lost claim failed: %s", profile, exc)
