"""The reaper: every lease/4, returns expired leases (their worker died) to pending, or to
failed with ``lease_expired`` when the attempts are used up. One reaper at a time across all
processes (an advisory lock inside ``JobRepository.reap``); the others skip their turn.
Requeued jobs NOTIFY their profile's channel, so an idle worker picks them up at once.
"""

from __future__ import annotations

import logging
import random

import anyio

from service import metrics
from service.db import DatabaseUnavailable
from service.jobs import JobRepository

log = logging.getLogger("ai_service.worker.reaper")

BATCH = 1000


class Reaper:
    def __init__(self, repo: JobRepository, *, lease_seconds: float) -> None:
        self.repo = repo
        self.interval = lease_seconds / 4

    async def run(self) -> None:
        while True:
            try:
                await self.reap_once()
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
            if reaped:
                log.warning(
                    "reaped %d expired leases (%d back to pending, %d failed: lease_expired)",
                    len(reaped),
                    len(reaped) - failed,
                    failed,
                )
            if len(reaped) < BATCH:
                return total
