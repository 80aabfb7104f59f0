"""The claim loop of one model profile.

It claims only free capacity (``limit - in_flight``), in one batch. While the queue may hold
more work (the last claim filled every free slot) it claims again the moment a slot frees, with
no sleep between jobs. Once a claim comes back short the queue is drained; the loop then waits
for a wake-up (NOTIFY on ``ai_jobs:<profile>``, a listener reconnect) or until the earlier of
the next ``run_after`` among pending jobs and the fallback poll interval.

The claim itself is shielded from cancellation: a claim that committed must reach the executor
(or be released), never vanish with its lease still held. A claim that fails in flight may
still have committed (the connection dropped after the commit, before the rows arrived):
before its next claim the loop releases this profile's jobs the database says it holds but it
does not know, instead of leaving them to wait out their leases and lose an attempt.

Once the worker stops, a claim (or such a release) still in flight gets ``STOP_WAIT`` more
seconds, and so does handing back the jobs of a claim that returned after the stop: on a
database that stopped answering it waited for the statement's own bound (70 s by default), and
the grace, the final writes and a second signal all waited behind it, past Kubernetes'
termination grace. A claim cut short that did commit is handed back with the other orphans as
the worker stops (``shutdown.release_unknown``), or waits out its leases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from uuid import UUID

import anyio
import anyio.lowlevel

from service import metrics, tracing
from service.backoff import Backoff
from service.db import DatabaseUnavailable
from service.handlers.base import HealthCheck
from service.jobs import Job, JobRepository
from service.worker.breaker import ProviderBreaker
from service.worker.executor import Executor
from service.worker.shutdown import release_orphans
from service.worker.status import ProfileStats
from service.worker.wakeup import Wakeup

log = logging.getLogger("ai_service.worker.claimer")

STOP_WAIT = 2.0  # a claim in flight when the worker stops: this long more, at most
DUE_SLACK = 0.002  # wake this much after run_after so the job is due when the claim runs
# A due job we could not take is being claimed by another worker: look again shortly, and
# back off, doubling to a second, while it stays so (rows locked for long: a bulk cancel, an
# operator's open transaction), rather than two queries per profile every 10 ms meanwhile.
LOCKED_RETRY, LOCKED_RETRY_MAX = 0.01, 1.0


class ClaimLoop:
    def __init__(
        self,
        profile: str,
        *,
        repo: JobRepository,
        worker_id: str,
        executor: Executor,
        stats: ProfileStats,
        lease_seconds: float,
        poll_interval: float,
        skip_types: Sequence[str] = (),
        health_check: HealthCheck | None = None,
    ) -> None:
        self.profile = profile
        self.skip_types = tuple(skip_types)  # left to external workers (see JobRepository.claim)
        # The executor reports each outcome to it (through ``stats``); it pauses this loop.
        self.breaker = stats.breaker = stats.breaker or ProviderBreaker(
            profile, health_check=health_check
        )
        self.breaker.on_close = self.notify  # the server answers again: claim at full capacity
        self.repo = repo
        self.worker_id = worker_id
        self.executor = executor
        self.stats = stats
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self._wakeup = Wakeup()
        self._hint = False
        self._stopped = False
        self._orphans_possible = False
        self._check_scope: anyio.CancelScope | None = None
        self._shielded: anyio.CancelScope | None = None  # a claim or release in flight
        self._sent = 0.0  # when the last claim had its connection (its leases began after)
        self._locked = Backoff(LOCKED_RETRY, LOCKED_RETRY_MAX)

    # --- signals from other parts of the worker (all synchronous, never block) -----------
    def notify(self) -> None:
        """There may be new work: a NOTIFY, or a (re)connect of the listener (catch-up)."""
        self._hint = True
        self._wakeup.set()

    def slot_freed(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        self._stopped = True
        self._wakeup.set()
        if self._check_scope is not None:
            self._check_scope.cancel()
        if self._shielded is not None:
            self._bound(self._shielded)

    @staticmethod
    def _bound(scope: anyio.CancelScope) -> None:
        scope.deadline = min(scope.deadline, anyio.current_time() + STOP_WAIT)

    @contextmanager
    def _stoppable(self) -> Iterator[None]:
        """A wait that ``stop()`` cuts short: a check of the inference server, or the lookup
        of when the next job is due (on a database that stopped answering it waited for the
        statement's own bound, 70 s by default, and the graceful stop with it)."""
        with anyio.CancelScope() as scope:
            if self._stopped:
                scope.cancel()
            self._check_scope = scope
            try:
                yield
            finally:
                self._check_scope = None

    @contextmanager
    def _shield(self) -> Iterator[anyio.CancelScope]:
        """A scope no outer cancellation reaches (see the module docstring), bounded once
        the loop stops."""
        with anyio.CancelScope(shield=True) as scope:
            self._shielded = scope
            if self._stopped:
                self._bound(scope)
            try:
                yield scope
            finally:
                self._shielded = None

    # --- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        may_have_work = True  # claim once at start: catch up on what arrived before us
        idle_until = 0.0
        backoff = Backoff(0.05, 5.0)
        while not self._stopped:
            free = self.stats.capacity - self.stats.in_flight
            if pause := self.breaker.pause_left():  # the inference server is down: spare the
                self.stats.state = "paused"  # queue (re-checked on every wake-up: a success
                await self._release_orphans_now()  # of a job in flight closes the breaker)
                await self._wakeup.wait(pause)
                continue
            if self.breaker.needs_check():
                self.stats.state = "checking"
                await self._release_orphans_now()
                with self._stoppable():
                    await self.breaker.check()
                continue
            limit = self.breaker.claim_limit(free, self.stats.in_flight)
            if limit > 0 and (may_have_work or self._hint or time.monotonic() >= idle_until):
                self._hint = False
                self.stats.state = "claiming"
                try:
                    if self._orphans_possible:
                        await self._release_orphans()
                    if self._stopped:  # stopped meanwhile: no claim after it
                        break
                    self._sent = time.monotonic()  # the leases begin after this (moved on
                    jobs = await self._claim(limit)  # once the claim has a connection)
                except DatabaseUnavailable as exc:
                    may_have_work = True
                    self.stats.state = "backoff"
                    log.warning("claim on %s failed, will retry: %s", self.profile, exc)
                    await self._pause(backoff.next())
                    continue
                except Exception:
                    may_have_work = True
                    self.stats.state = "backoff"
                    log.exception("claim on %s failed unexpectedly", self.profile)
                    # not a database outage: a notification says nothing about it
                    await self._pause(backoff.next(), on_hint=False)
                    continue
                backoff.reset()
                if self._stopped:
                    await self._release(jobs)
                    break
                self.executor.start_many(jobs, since=self._sent)
                self.stats.claimed += len(jobs)
                metrics.jobs_claimed(jobs)
                if jobs:
                    self._locked.reset()
                may_have_work = len(jobs) >= free or (len(jobs) >= limit and limit < free)
                if not may_have_work:
                    await anyio.lowlevel.checkpoint()  # let the handlers start first
                    with self._stoppable():
                        idle_until = time.monotonic() + await self._idle_seconds()
                continue
            if free <= 0:
                self.stats.state = "full"
            elif not limit:
                self.stats.state = "probing"  # one job out to a recovering server
            else:  # nothing due: "idle" only when nothing runs either
                self.stats.state = "waiting" if self.stats.in_flight else "idle"
            timeout = None if limit <= 0 else idle_until - time.monotonic()
            await self._wakeup.wait(timeout)
        self.stats.state = "stopped"

    def _connected(self) -> None:
        self._sent = time.monotonic()

    async def _claim(self, free: int) -> list[Job]:
        jobs: list[Job] = []
        with self._shield(), tracing.receive(self.profile) as received:
            self._orphans_possible = True  # until the claimed rows are in hand
            jobs = await self.repo.claim(
                self.profile,
                self.worker_id,
                limit=free,
                lease_seconds=self.lease_seconds,
                skip_types=self.skip_types,
                connected=self._connected,
            )
            self._orphans_possible = False
            received.got(jobs)
        return jobs

    async def _release_orphans_now(self) -> None:
        """Before a pause that may outlast the lease (the inference server down): a lost
        claim's jobs are handed back now, not held unrenewed until they are reaped (and an
        attempt counted). If it fails, the next claim round tries again first."""
        if not self._orphans_possible:
            return
        try:
            await self._release_orphans()
        except Exception as exc:
            log.warning("releasing %s jobs of a lost claim failed: %s", self.profile, exc)

    async def _release_orphans(self) -> None:
        with self._shield() as scope:
            known = self.executor.held_ids()
            await release_orphans(self.repo, self.worker_id, self.profile, self.stats, known)
        if not scope.cancelled_caught:  # cut short by a stop: still possible
            self._orphans_possible = False

    async def _idle_seconds(self) -> float:
        """Until the earliest pending job is due, capped by the fallback poll interval."""
        try:
            due_in = await self.repo.seconds_until_due(self.profile, skip_types=self.skip_types)
        except DatabaseUnavailable:
            return min(self.poll_interval, 1.0)
        except Exception:  # not known to happen: it must not end the loop (and every job)
            log.exception("reading when %s jobs are next due failed", self.profile)
            return min(self.poll_interval, 1.0)
        if due_in is None:
            self._locked.reset()
            return self.poll_interval
        if due_in <= 0:
            return min(self.poll_interval, self._locked.next())
        self._locked.reset()
        return min(self.poll_interval, due_in + DUE_SLACK)

    async def _pause(self, seconds: float, *, on_hint: bool = True) -> None:
        """Back off after a failed claim, but stop at once when asked to, and (``on_hint``)
        claim at once on a notification or a listener reconnect: either means the database
        answers again (the backoff grows to 5 s; a job submitted as the database came back
        waited it out)."""
        deadline = time.monotonic() + seconds
        while not self._stopped and time.monotonic() < deadline:
            if on_hint and self._hint:
                return
            await self._wakeup.wait(deadline - time.monotonic())

    async def _release(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        released: set[UUID] | None = None  # claimed as the worker stopped: STOP_WAIT, as
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_WAIT):  # for the claim
            try:
                released = await self.repo.release(self.worker_id, [j.id for j in jobs])
            except DatabaseUnavailable as exc:
                log.warning("releasing %d jobs claimed during shutdown failed: %s", len(jobs), exc)
        if released is None:  # failed or timed out: the final writes try again
            self.executor.to_release.extend(jobs)
        else:
            self.stats.released += len(released)
