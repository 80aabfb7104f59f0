"""The lease keeper: renews the leases of every job this process holds, every lease/3, in one
statement. A job the renewal does not return is no longer ours (reaped after an outage,
retried or cancelled by an operator): its handler is cancelled and its late result dropped.

Jobs whose result waits in the completer are renewed too, so a slow flush (database briefly
down) does not let their lease expire and the job run twice.

``renew_soon()`` renews at once: after the listener reconnects, the cancellations and
take-backs notified while it was away are gone, and the renewal is what finds them.

While renewals fail (this process cut off from PostgreSQL, others not), the leases run out
all the same and another process's reaper may hand the jobs to a worker that reaches the
database: a handler whose lease has run out by this process's clock (since its claim or the
last renewal of it that got through, less a margin) is stopped as ``lost``, so a job never runs
twice at once. Its result would be refused anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from uuid import UUID

import anyio

from service import metrics
from service.backoff import Backoff
from service.db import DatabaseUnavailable
from service.jobs import JobRepository
from service.worker.cancellation import Running
from service.worker.wakeup import Wakeup

log = logging.getLogger("ai_service.worker.lease")


RETRY_MAX = 5.0  # seconds between renewal attempts while the database does not answer
MARGIN_MAX = 30.0  # a handler is stopped this long (at most a tenth of the lease; plus the
# pace of the checks) before its lease would run out unrenewed: slack for the claim's round trip


class LeaseKeeper:
    def __init__(
        self,
        repo: JobRepository,
        worker_id: str,
        running: Running,
        *,
        lease_seconds: float,
        also_held: Callable[[], list[UUID]] = list,
    ) -> None:
        self.repo = repo
        self.worker_id = worker_id
        self.running = running
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self.also_held = also_held
        self._soon = Wakeup()
        self._retry_max = max(min(self.interval / 2, RETRY_MAX), 0.1)
        self._margin = min(MARGIN_MAX, lease_seconds / 10) + self._retry_max

    def renew_soon(self) -> None:
        self._soon.set()

    async def run(self) -> None:
        # Retries during an outage stay frequent (at most RETRY_MAX apart): the leases run out
        # at the same pace whether or not the database answers, and a renewal that comes back
        # late after the outage may find its jobs already reaped and claimed elsewhere.
        async with anyio.create_task_group() as tg:
            # on a clock of its own: one renewal that hangs (a cut network: ~30 s before the
            # connection is declared dead) must not hold back the stop of what it was renewing
            tg.start_soon(self._watch, name="lease watch")
            backoff = Backoff(0.1, self._retry_max)
            delay = self.interval
            while True:
                await self._soon.wait(delay)
                try:
                    await self.renew()
                except DatabaseUnavailable as exc:
                    delay = backoff.next()
                    log.warning("lease renewal failed, retrying in %.2fs: %s", delay, exc)
                    continue
                except Exception:
                    delay = backoff.next()
                    log.exception("lease renewal failed unexpectedly")
                    continue
                backoff.reset()
                delay = self.interval

    async def _watch(self) -> None:
        while True:
            await anyio.sleep(self._retry_max)
            try:
                self.stop_unrenewed()
            except Exception:  # it must not end the keeper (and with it the worker)
                log.exception("checking for leases that ran out failed")

    async def renew(self) -> None:
        entries = [e for e in self.running if not e.given_up]
        ids = [e.job.id for e in entries]
        watched = set(ids)
        ids += [i for i in self.also_held() if i not in watched]
        if not ids:
            return
        sent = time.monotonic()
        held = await self.repo.heartbeat(
            self.worker_id, ids, lease_seconds=self.lease_seconds, default_seconds=None
        )
        metrics.leases_renewed(len(held))
        for entry in entries:
            if entry.job.id in held:  # its lease runs from (after) this send now
                entry.since = max(entry.since, sent)
            # Only the run we asked about: a job that failed, went back to pending and was
            # claimed again by us meanwhile is a new run with a fresh lease. Nor a run whose
            # handler has returned: its outcome, stored as the renewal went out, ended the
            # lease itself (a run lost for real is told so when its outcome is refused).
            elif self.running.is_current(entry) and not entry.finished:
                log.warning(
                    "lease of job %s lost; cancelling it",
                    entry.job.id,
                    extra={"job_id": str(entry.job.id)},
                )
                metrics.lease_lost(entry.job.model_profile)
                entry.cancel("lost")

    def stop_unrenewed(self) -> None:
        """Stop (``lost``) each handler whose lease has run out by this process's clock."""
        now, limit = time.monotonic(), self.lease_seconds - self._margin
        for entry in self.running:
            if entry.finished or entry.given_up or entry.reason is not None:
                continue
            if now - entry.since >= limit:
                log.warning(
                    "lease of job %s ran out while renewals failed; stopping it (another "
                    "worker may be given it)",
                    entry.job.id,
                    extra={"job_id": str(entry.job.id)},
                )
                metrics.lease_lost(entry.job.model_profile)
                entry.cancel("lost")
