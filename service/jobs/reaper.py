"""The reaper: returns expired leases (their worker died) to pending, or to failed with
``lease_expired`` when the attempts are used up. One reaper at a time across all processes (an
advisory lock inside ``JobRepository.reap``); the others skip their turn. Requeued jobs NOTIFY
their profile's channel, so an idle worker picks them up at once.

It runs in every worker process and in the API (whose external workers may be the only ones:
a dead one's jobs must come back all the same). A turn comes every lease/4 — or sooner, when
the earliest lease of a running job ends before that: an external worker claims with its own
``lease_seconds``, and its jobs should not wait out the built-in workers' interval.

With ``JOB_RETENTION`` set, every lease/4 (on a clock of its own: reaper turns may come much
oftener) the reaper also deletes jobs that finished longer ago than that, at most
``PURGE_BATCHES`` batches a time so a first purge of a large history is spread out instead of
loading the database at once. It runs outside the reaper's lock, in every worker and API
process: deletes skip rows others hold, so processes purging at once share the work.
"""

from __future__ import annotations

import logging
import math
import random
import time

import anyio

from service import metrics
from service.db import DatabaseUnavailable
from service.jobs import JobRepository
from service.jobs.repository import Reaped
from service.logs import id_list, reason

log = logging.getLogger("ai_service.reaper")

BATCH = 1000
PURGE_BATCHES = 50  # at most 50,000 deletions a turn
# The shortest wait between turns: a lease expiring now is being reaped by another process
# (whose transaction this one's lock attempt skips), so this one must not spin meanwhile.
MIN_WAIT_S = 1.0


class Reaper:
    def __init__(
        self, repo: JobRepository, *, lease_seconds: float, retention: float = 0.0
    ) -> None:
        self.repo = repo
        self.interval = lease_seconds / 4
        self.retention = retention
        self._wake = anyio.Event()
        self._lease_end = math.inf  # (monotonic) the earliest lease granted here since a turn
        self._next_purge = 0.0  # (monotonic)

    async def run(self) -> None:
        metrics.reaper_running()
        while True:
            self._lease_end = math.inf  # from here on, the turn's own query sees new leases
            wait = self.interval
            try:
                wait = await self.turn()
            except DatabaseUnavailable as exc:
                log.warning("reaper skipped a turn: %s", reason(exc))
            except Exception:
                log.exception("reaper failed unexpectedly")
            # jitter (late only: never before a lease ends) keeps the processes' turns apart
            await self._pause(wait * random.uniform(1.0, 1.2))

    async def turn(self) -> float:
        """Reap, purge when its time has come; return the wait until the next turn."""
        await self.reap_once()
        if self.retention and time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + self.interval
            await self.purge_once()
        return await self.next_wait()

    def lease_ends_in(self, seconds: float) -> None:
        """A lease set in this process ends in ``seconds`` (granted by the API's claim or
        heartbeat routes; ended now by a worker giving up a job): if that is before the next
        turn, the turn comes when it ends instead."""
        end = time.monotonic() + seconds
        if end < self._lease_end:
            self._lease_end = end
            self._wake.set()

    async def _pause(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            deadline = min(deadline, self._lease_end + MIN_WAIT_S / 4)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake = anyio.Event()
            with anyio.move_on_after(left):
                await self._wake.wait()

    async def next_wait(self) -> float:
        """Until the earliest lease ends (a moment past it), at most the interval."""
        expiry = await self.repo.seconds_until_lease_expiry()
        if expiry is None:
            return self.interval
        return min(self.interval, max(MIN_WAIT_S, expiry + MIN_WAIT_S / 4))

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
