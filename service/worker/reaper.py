"""The reaper: every lease/4, returns expired leases (their worker died) to pending, or to
failed with ``lease_expired`` when the attempts are used up. One reaper at a time across all
processes (an advisory lock inside ``JobRepository.reap``); the others skip their turn.
Requeued jobs NOTIFY their profile's channel, so an idle worker picks them up at once.

With ``JOB_RETENTION`` set, each turn also deletes jobs that finished longer ago than that, at
most ``PURGE_BATCHES`` batches a turn so a first purge of a large history is spread out
instead of loading the database at once. It runs outside the reaper's lock, in every worker
process: deletes skip rows others hold, so processes purging at once share the work.
"""

from __future__ import annotations

import logging
import random

import anyio

from service import metrics
from service.db import DatabaseUnavailable
from service.jobs import JobRepository
from service.jobs.repository import Reaped
from service.logs import id_list

log = logging.getLogger("ai_service.worker.reaper")

BATCH = 1000
PURGE_BATCHES = 50  # at most 50,000 deletions a turn


class Reaper:
    def __init__(
        self, repo: JobRepository, *, lease_seconds: float, retention: float = 0.0
    ) -> None:
        self.repo = repo
        self.interval = lease_seconds / 4
        self.retention = retention

    async def run(self) -> None:
        while True:
            try:
                await self.reap_once()
                if self.retention:
                    await self.purge_once()
            except DatabaseUnavailable as exc:
                log.warning("reaper skipped a turn: %s", exc)
            except Exception:
                log.exception("reaper failed unexpectedly")
            # jitter keeps the processes' turns apart
            await anyio.sleep(self.interval * random.uniform(0.8, 1.2))

    async def reap_once(self) -> int:
        total = 0
        while True:
            reaped = await self.repo.reap(limit=BATCH)
            if reaped is None:
                return total
            total += len(reaped)
            failed = sum(1 for r in reaped if r.status == "failed")
            metrics.leases_reaped(len(reaped) - failed, failed)
            for r in reaped:  # a lease that expired is a failed attempt, like any other
                metrics.job_failed(r, "lease_expired", final=r.status == "failed")
            _log_reaped(reaped)
            if len(reaped) < BATCH:
                return total

    async def purge_once(self) -> int:
        """Delete jobs finished more than ``retention`` ago; return how many."""
        total = 0
        for _ in range(PURGE_BATCHES):
            deleted = await self.repo.purge_finished(older_than=self.retention, limit=BATCH)
            total += deleted
            if deleted < BATCH:
                break
        if total:
            log.info("deleted %d jobs that finished more than %gs ago", total, self.retention)
        return total


def _log_reaped(reaped: list[Reaped]) -> None:
    """One line per (profile, worker whose leases expired): which jobs, and where they went.
    Any process's reaper takes any profile's leases, so the line says whose they were."""
    groups: dict[tuple[str, str | None], list[Reaped]] = {}
    for r in reaped:
        groups.setdefault((r.model_profile, r.lost_worker), []).append(r)
    for (profile, worker), jobs in groups.items():
        failed = [r for r in jobs if r.status == "failed"]
        log.warning(
            "reaped %d expired leases of %s held by worker %s (it stopped renewing them): "
            "%d back to pending, %d failed (lease_expired, no attempts left): %s",
            len(jobs),
            profile,
            worker or "?",
            len(jobs) - len(failed),
            len(failed),
            id_list(r.id for r in jobs),
            extra={"model_profile": profile, "lost_worker": worker or ""},
        )
