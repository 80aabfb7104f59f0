"""The in-flight jobs of this process and how each one is stopped.

Every running job has its own anyio cancel scope. Three things cancel it, and the reason
decides what happens to the job afterwards:

- ``lost``: the job is no longer held (reaped, retried, taken over), found by the lease
  keeper or told by a notification naming the run; the late result is discarded.
- ``cancelled``: a ``ai_jobs_cancelled`` notification (the API cancelled the job); discarded.
- ``shutdown``: the shutdown grace ran out; the job is released to pending.

A notification about a job not (yet) running here is remembered for a minute: the claim that
took the job may have committed just before the cancel, with its rows still on their way to
the executor when the notification arrives. The run is stopped as soon as it is added.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import anyio

from service.jobs import Job

log = logging.getLogger("ai_service.worker.cancellation")

Reason = Literal["lost", "cancelled", "shutdown"]


@dataclass(eq=False)
class RunningJob:
    job: Job
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    reason: Reason | None = None
    # The handler has returned; its outcome is being recorded. A notification about this run
    # now is the echo of that outcome (the worker's own retry notifies the run it took back).
    finished: bool = False
    # (monotonic) when the claim that took the run, or the last renewal of its lease that got
    # through, was sent: the lease keeper's bound on the lease while renewals fail
    since: float = field(default_factory=time.monotonic)
    # Its outcome could not be written and its lease is being ended: not renewed any more
    given_up: bool = False

    def cancel(self, reason: Reason) -> None:
        if self.reason is None:
            self.reason = reason
            self.scope.cancel()


RECENT_SECONDS = 60.0  # how long a notification about a job not running here is kept
RECENT_MAX = 10_000  # and how many (a bulk cancel names every job it cancels)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _micros(at: datetime | None) -> int | None:
    return None if at is None else (at - _EPOCH) // _MICROSECOND


class Running:
    """Jobs whose handler is running in this process, by id."""

    def __init__(self) -> None:
        self._jobs: dict[UUID, RunningJob] = {}
        self._empty = anyio.Event()
        self._empty.set()
        # (job id, run in µs or None for the job's cancellation) -> when it was heard
        self._recent: dict[tuple[UUID, int | None], float] = {}

    def add(self, job: Job, since: float | None = None) -> RunningJob:
        """``since``: (monotonic) when the claim that took ``job`` was sent (its lease began
        after that); by default now."""
        old = self._jobs.get(job.id)
        if old is not None:
            # We claimed the job again, so the earlier lease on it is gone.
            old.cancel("lost")
        entry = RunningJob(job) if since is None else RunningJob(job, since=since)
        self._jobs[job.id] = entry
        if self._empty.is_set():
            self._empty = anyio.Event()
        if self._recent:
            if self._recent.pop((job.id, None), None) is not None:
                self._stop(entry, "cancelled")
            elif self._recent.pop((job.id, _micros(job.started_at)), None) is not None:
                self._stop(entry, "lost")
        return entry

    def remove(self, entry: RunningJob) -> None:
        if self._jobs.get(entry.job.id) is entry:
            del self._jobs[entry.job.id]
        if not self._jobs:
            self._empty.set()

    def cancel(self, job_id: UUID, reason: Reason, *, started_us: int | None = None) -> bool:
        """Stop the run of ``job_id`` here, if any; with ``started_us``, only if it is the
        run that started then (a newer claim of the same job is another run)."""
        entry = self._jobs.get(job_id)
        if entry is None or (
            started_us is not None and _micros(entry.job.started_at) != started_us
        ):
            self._remember((job_id, started_us))
            return False
        if entry.finished:
            return False
        self._stop(entry, reason)
        return True

    def _stop(self, entry: RunningJob, reason: Reason) -> None:
        job_id = entry.job.id
        log.warning("cancelling job %s: %s", job_id, reason, extra={"job_id": str(job_id)})
        entry.cancel(reason)

    def _remember(self, key: tuple[UUID, int | None]) -> None:
        now = time.monotonic()
        self._recent.pop(key, None)
        self._recent[key] = now
        while self._recent:  # oldest first: drop what is too old, or beyond the bound
            oldest, at = next(iter(self._recent.items()))
            if now - at < RECENT_SECONDS and len(self._recent) <= RECENT_MAX:
                break
            del self._recent[oldest]

    def is_current(self, entry: RunningJob) -> bool:
        """Still the registered run of its job (not finished, not replaced by a new claim)."""
        return self._jobs.get(entry.job.id) is entry

    def cancel_all(self, reason: Reason) -> None:
        for entry in list(self._jobs.values()):
            entry.cancel(reason)

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def ids(self) -> list[UUID]:
        return list(self._jobs)

    def __iter__(self) -> Iterator[RunningJob]:
        return iter(list(self._jobs.values()))

    def __len__(self) -> int:
        return len(self._jobs)
