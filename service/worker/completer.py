"""Batch completer (River's pattern): results are collected for a few milliseconds, or until a
batch is full, and stored with one ``complete_many`` statement and one commit.

A result is never dropped on a database error: the batch stays queued and is retried with
backoff until the database answers, and shutdown flushes what is left. A result is dropped only
when the database says this worker no longer holds the job (lease lost, job cancelled). A
batch that fails for any other reason is stored one job at a time, so one bad result cannot
block the others: a result PostgreSQL can never store (``\\u0000`` in jsonb, a string over
jsonb's limit) fails its job with ``invalid_output``; one refused for a reason not known to be
permanent stays queued and is retried, behind the others, never failed on a guess.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import islice
from typing import Any
from uuid import UUID

import anyio

from service import metrics
from service.backoff import Backoff
from service.db import DatabaseUnavailable, IntegrityViolation, ValueRefused
from service.handlers.base import InvalidOutput
from service.jobs import Job, JobError, JobRepository
from service.worker.status import WorkerStatus
from service.worker.wakeup import Wakeup

log = logging.getLogger("ai_service.worker.completer")

Item = tuple[UUID, tuple[Job, Any]]

WINDOW = 0.002  # seconds to collect more results before a flush
MAX_BATCH = 500  # results per statement
MAX_PENDING = 10_000  # executors wait (backpressure) when this many results are unstored


class Completer:
    def __init__(
        self,
        repo: JobRepository,
        worker_id: str,
        status: WorkerStatus,
        *,
        window: float = WINDOW,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.repo = repo
        self.worker_id = worker_id
        self.status = status
        self.window = window
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._items: dict[UUID, tuple[Job, Any]] = {}
        self._ready = Wakeup()
        self._full = Wakeup()
        self._space = Wakeup()
        self._lock = anyio.Lock()
        # Results tried and not yet settled: a try whose answer was lost may have stored them.
        self._unsure: set[UUID] = set()

    async def submit(self, job: Job, result: Any) -> None:
        while len(self._items) >= self.max_pending:
            await self._space.wait()
        self.add(job, result)

    def add(self, job: Job, result: Any) -> None:
        """Queue a result now, past ``max_pending`` if need be (``submit`` waits for room)."""
        self._items[job.id] = (job, result)
        self.status.pending_completions = len(self._items)
        self._ready.set()
        if len(self._items) >= self.max_batch:
            self._full.set()

    def pending_ids(self) -> list[UUID]:
        return list(self._items)

    def queued_jobs(self) -> list[Job]:
        """The jobs whose results are not stored yet."""
        return [job for job, _ in self._items.values()]

    def __len__(self) -> int:
        return len(self._items)

    async def run(self) -> None:
        backoff = Backoff(0.05, 2.0)
        while True:
            await self._ready.wait()
            if len(self._items) < self.max_batch:
                await self._full.wait(self.window)
            while self._items:
                if await self.flush_once():
                    backoff.reset()
                else:
                    await anyio.sleep(backoff.next())

    async def drain(self) -> None:
        """Store everything queued; retries until done (bound it with a cancel scope)."""
        backoff = Backoff(0.05, 1.0)
        while self._items:
            if not await self.flush_once():
                await anyio.sleep(backoff.next())

    async def flush_pass(self) -> None:
        """One try at every queued result, stopping at the first batch not stored (the
        final writes, between tries at the release: the database may be back)."""
        for _ in range(-(-len(self._items) // self.max_batch)):
            if not await self.flush_once():
                return

    async def flush_once(self) -> bool:
        """Store one batch; False when the database was unavailable (nothing was lost)."""
        async with self._lock:
            batch = list(islice(self._items.items(), self.max_batch))
            if not batch:
                return True
            try:
                stored = await self._complete(batch)
            except DatabaseUnavailable as exc:
                log.warning("storing %d results failed, will retry: %s", len(batch), exc)
                return False
            except Exception:
                log.exception("storing a batch of %d results failed; storing singly", len(batch))
                return await self._store_singly(batch)
            self._settle(batch, stored)
            return True

    async def _complete(self, batch: Sequence[Item]) -> set[UUID]:
        """Store ``batch``; the ids whose results are stored in their runs: by this try, or
        by an earlier one whose answer was lost (the connection dropped around the COMMIT,
        or the wait was cancelled). Those were logged and counted as discarded, and missed
        by the completion metric. A result stays "unsure" from its first try until settled."""
        earlier = {job_id for job_id, _ in batch if job_id in self._unsure}
        self._unsure.update(job_id for job_id, _ in batch)
        held = await self.repo.complete_many(
            self.worker_id,
            [(job_id, result) for job_id, (_, result) in batch],
            [job.started_at for _, (job, _) in batch],
        )
        runs = [(i, job.started_at) for i, (job, _) in batch if i not in held and i in earlier]
        if not runs:
            return held
        try:
            return held | await self.repo.completed_runs(self.worker_id, runs)
        except Exception as exc:
            log.warning("could not check whether %d results were stored: %s", len(runs), exc)
            return held

    async def _store_singly(self, batch: Sequence[Item]) -> bool:
        """True when every result of ``batch`` was settled; a result left queued moves to
        the back of the queue, so the next batch starts with the others."""
        settled = True
        for item in batch:
            job_id, (job, _) = item
            try:
                held = await self._complete([item])
            except DatabaseUnavailable:
                return False
            except (ValueRefused, IntegrityViolation) as exc:
                if not await self._fail_unstorable(job, exc):
                    self._requeue(job_id)
                    settled = False
                    continue
                self._settle([item], set(), counted=True)
                continue
            except Exception:
                log.exception(
                    "storing the result of job %s failed; will retry",
                    job_id,
                    extra={"job_id": str(job_id)},
                )
                self._requeue(job_id)
                settled = False
                continue
            self._settle([item], held)
        return settled

    def _requeue(self, job_id: UUID) -> None:
        item = self._items.pop(job_id, None)
        if item is not None:
            self._items[job_id] = item

    def _forget(self, job_id: UUID, item: tuple[Job, Any]) -> None:
        """Drop ``item`` once settled, unless a newer run of the job (claimed again by this
        worker) has queued its own result meanwhile: that one is still to be stored."""
        if self._items.get(job_id) is item:
            del self._items[job_id]
            self._unsure.discard(job_id)

    async def _fail_unstorable(self, job: Job, exc: Exception) -> bool:
        """Fail ``job`` for a result the database refused for good; False if that could not
        be recorded now (the result stays queued and is tried again)."""
        log.error(
            "result of job %s cannot be stored: %s", job.id, exc, extra={"job_id": str(job.id)}
        )
        try:
            failed = await self.repo.fail(
                job.id,
                self.worker_id,
                error_category=InvalidOutput.category,
                error_message=f"the result could not be stored: {exc}",
                retryable=InvalidOutput.retryable,
                started_at=job.started_at,
            )
        except JobError:
            return True  # no longer ours
        except Exception as fail_exc:  # DatabaseUnavailable, or anything unforeseen
            log.warning(
                "recording that job %s failed did not succeed: %s",
                job.id,
                fail_exc,
                extra={"job_id": str(job.id)},
            )
            return False
        metrics.job_failed(job, InvalidOutput.category, final=failed.status != "pending")
        stats = self.status.profiles.get(job.model_profile)
        if stats is not None:
            if failed.status == "pending":
                stats.retried += 1
            else:
                stats.failed += 1
        return True

    def _settle(self, batch: Sequence[Item], held: set[UUID], *, counted: bool = False) -> None:
        for job_id, item in batch:
            self._forget(job_id, item)
            job = item[0]
            stats = self.status.profiles.get(job.model_profile)
            if counted or stats is None:
                continue
            if job_id in held:
                stats.completed += 1
                metrics.job_completed(job)
            else:
                stats.discarded += 1
                log.warning(
                    "result of job %s discarded: this worker no longer holds it",
                    job_id,
                    extra={"job_id": str(job_id)},
                )
        self.status.pending_completions = len(self._items)
        self._space.set()
