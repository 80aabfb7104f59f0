"""Runs one claimed job: find its handler, run it in the job's cancel scope, hand the outcome
to the completer (success) or record the failure with its category.

Failure mapping: a ``HandlerError`` carries its own category, retryability and Retry-After;
any other exception is ``internal`` and retryable; a task_type no handler serves fails at once
with ``unsupported_task`` (not retryable) rather than being left to rot. A result is encoded to
JSON here, once, so an unserialisable result fails this job instead of a whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import anyio
import msgspec
from anyio.abc import TaskGroup
from opentelemetry.trace import Span

from service import metrics, telemetry, tracing
from service.backoff import Backoff
from service.db import DatabaseUnavailable
from service.handlers.base import HandlerError, HandlerRegistry, UnsupportedTask
from service.jobs import Job, JobError, JobRepository
from service.jobs.repository import stored_message
from service.logs import job_context
from service.worker.cancellation import Running, RunningJob
from service.worker.completer import Completer
from service.worker.status import WorkerStatus

log = logging.getLogger("ai_service.worker.executor")
GIVE_UP_TIMEOUT_S = 5.0  # the most a job given up may hold its task (and capacity) further

_encoder = msgspec.json.Encoder()


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # another anyio backend
        return False
    return True


class HandlerEscaped(HandlerError):
    """A handler raised something that is not an ``Exception``: a bug, retried as one."""


def _is_cancellation(exc: BaseException, entry: RunningJob) -> bool:
    """Whether ``exc`` is this job's task being cancelled (its scope, or the process exiting
    at once), which must propagate, rather than a ``CancelledError`` the handler let out of
    a task of its own. Under another anyio backend it cannot be told apart: assumed ours."""
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    if entry.scope.cancel_called or not _on_asyncio():
        return True
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class Executor:
    def __init__(
        self,
        *,
        registry: HandlerRegistry,
        repo: JobRepository,
        worker_id: str,
        running: Running,
        completer: Completer,
        status: WorkerStatus,
        on_slot_freed: Callable[[str], None],
        on_lease_ended: Callable[[], None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.on_lease_ended = on_lease_ended  # a job given up: the reaper's turn comes now
        self.repo = repo
        self.worker_id = worker_id
        self.running = running
        self.completer = completer
        self.status = status
        self.on_slot_freed = on_slot_freed
        self.to_release: list[Job] = []  # stopped by the shutdown grace or a hard exit
        self._tg: TaskGroup | None = None
        # On asyncio, jobs run as plain tasks owned by ``_supervise`` (None on other backends).
        self._tasks: set[asyncio.Task[None]] | None = None
        self._closing = anyio.Event()

    def bind(self, tg: TaskGroup) -> None:
        """Run jobs in ``tg`` from now on; ``close()`` before ``tg`` is to end."""
        self._tg = tg
        if _on_asyncio():
            self._tasks = set()
            tg.start_soon(self._supervise, self._tasks, name="jobs")

    def close(self) -> None:
        """No more jobs will start: the task group may end once the running ones are done."""
        self._closing.set()

    def start_many(self, jobs: Sequence[Job], *, since: float | None = None) -> None:
        """Start a claimed batch now (the caller has already reserved its capacity).

        On asyncio each job is a plain asyncio task, owned by one long-lived task-group task
        (``_supervise``) rather than spawned in the task group: a task-group spawn costs
        ~30 µs (a task handle, a cancel scope, an event), an asyncio task ~4 µs. That is a
        third of the worker's CPU at 10,000+ jobs/s, and part of the pickup latency of every
        job an idle worker is woken for. Each job still runs in its own cancel scope
        (``RunningJob.scope``); if the process exits at once, the supervisor cancels the jobs,
        which are then released.
        """
        if not jobs:
            return
        tg, tasks = self._tg, self._tasks
        if tg is None:
            raise RuntimeError("the executor is not bound to a task group")
        if self._closing.is_set():  # a claim that ended as the process exits at once
            self.to_release.extend(jobs)  # (after close() no claim loop runs): hand them back
            return
        entries = [self.running.add(job, since) for job in jobs]
        for job in jobs:
            self.status.profiles[job.model_profile].in_flight += 1
        if tasks is None:  # another anyio backend: a task-group task per job
            for entry in entries:
                tg.start_soon(self._run, entry, name=f"job {entry.job.id}")
            return
        create = asyncio.get_running_loop().create_task
        for entry in entries:
            task = create(self._run(entry))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def held_ids(self) -> list[UUID]:
        """Every job this process holds: running, or finished with its result not stored."""
        return [*self.running.ids(), *self.completer.pending_ids()]

    async def _supervise(self, tasks: set[asyncio.Task[None]]) -> None:
        """Keep the task group open while jobs run, until ``close()`` and the last job ends.
        Cancelled first (the process exiting at once), it cancels every job still running
        (each is then released) and waits for them."""
        try:
            await self._closing.wait()
            while tasks:
                await asyncio.wait(set(tasks))
        except anyio.get_cancelled_exc_class():
            self._closing.set()  # from now on start_many hands jobs back
            for task in tasks:
                task.cancel()
            with anyio.CancelScope(shield=True):
                while tasks:
                    await asyncio.wait(set(tasks))
            raise

    async def _run(self, entry: RunningJob) -> None:
        job = entry.job
        try:
            with job_context(job.id), tracing.process(job) as span:
                try:
                    await self._execute(entry, span)
                except Exception as exc:
                    # Logged in the job's log context and span (job_id, trace_id on the line).
                    tracing.record_error(span, exc)
                    log.exception("executing job %s failed; giving it up to the reaper", job.id)
                    entry.given_up = True  # first: the lease keeper must not renew it
                    await self._give_up(job)
        except anyio.get_cancelled_exc_class():
            self.to_release.append(job)  # the process is exiting at once
            raise
        except Exception:  # starting the span failed: no span, but still the job's line
            log.exception("job %s could not start", job.id, extra={"job_id": str(job.id)})
        finally:
            self.running.remove(entry)
            self.status.profiles[entry.job.model_profile].in_flight -= 1
            self.on_slot_freed(entry.job.model_profile)

    async def _give_up(self, job: Job) -> None:
        """Its outcome could not be written: end its lease now, so the reaper hands it on
        (attempt counted) at once rather than after a whole lease held by nobody. Bounded:
        if even this fails, the lease ends on its own (it is no longer renewed)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(GIVE_UP_TIMEOUT_S):
            try:
                if await self.repo.expire_lease(self.worker_id, job.id, job.started_at):
                    self.on_lease_ended()
            except Exception as exc:
                log.warning("ending the lease of job %s failed: %s", job.id, exc)

    async def _execute(self, entry: RunningJob, span: Span) -> None:
        job = entry.job
        handler = self.registry.lookup(job.task_type, job.model_profile)
        if handler is None:
            served = ", ".join(self.registry.task_types(job.model_profile)) or "none"
            unsupported = UnsupportedTask(
                f"no handler for task_type {job.task_type!r} on profile "
                f"{job.model_profile!r} (served here: {served})"
            )
            tracing.record_error(span, unsupported)
            await self._record_failure(entry, unsupported)
            return
        error: Exception | None = None
        encoded: Any = None
        started = time.perf_counter()
        with entry.scope:
            try:
                result = await handler(job)
            except Exception as exc:
                error = exc
            except BaseException as exc:
                if _is_cancellation(exc, entry):
                    raise
                # A bug's ``SystemExit`` or a stray ``CancelledError`` from the handler's own
                # tasks: failed like any error, not let through to kill the worker or to end
                # the job's task while the job stays ``running`` until its lease expires.
                error = HandlerEscaped(f"the handler raised {type(exc).__name__}: {exc}")
            else:
                try:
                    encoded = msgspec.Raw(_encoder.encode(result))
                except (TypeError, ValueError, OverflowError) as exc:
                    error = HandlerError(f"the handler returned a result that is not JSON: {exc}")
        entry.finished = True
        outcome = "stopped" if entry.reason else "failed" if error else "completed"
        metrics.job_ran(job, time.perf_counter() - started, outcome)
        breaker = self.status.profiles[job.model_profile].breaker
        if breaker is not None and entry.reason is None:
            breaker.outcome(error)
        if entry.reason is not None:
            span.set_attribute("ai_service.job.stopped", entry.reason)
            self._stopped(entry)
        elif error is not None:
            tracing.record_error(span, error)
            await self._record_failure(entry, error)
        else:
            with self._outcome_scope(entry):
                await self.completer.submit(job, encoded)
                return
            # the grace ran out while the completer was full (the database down): kept over
            # the bound, for the final writes to store (or to release the job)
            self.completer.add(job, encoded)

    async def _record_failure(self, entry: RunningJob, error: Exception) -> None:
        with self._outcome_scope(entry):
            await self._fail(entry, error)
        if entry.reason is not None:  # the shutdown grace ran out while it was written
            self._stopped(entry)

    @staticmethod
    def _outcome_scope(entry: RunningJob) -> anyio.CancelScope:
        """The scope of writing a finished run's outcome, which the end of the shutdown grace
        cancels (``Running.cancel_all``) as it cancels handlers: on a database that stopped
        answering, a failure's write waited for the statement's own bound (70 s by default)
        and held the exit past Kubernetes' termination grace. Notifications about the run
        do not reach it (``Running.cancel`` skips finished runs): they echo this outcome."""
        entry.scope = anyio.CancelScope()
        return entry.scope

    def _stopped(self, entry: RunningJob) -> None:
        job, stats = entry.job, self.status.profiles[entry.job.model_profile]
        if entry.reason == "shutdown":
            self.to_release.append(job)
        else:
            stats.discarded += 1
            log.info("job %s stopped (%s); its result is discarded", job.id, entry.reason)

    async def _fail(self, entry: RunningJob, exc: Exception) -> None:
        job = entry.job
        if isinstance(exc, HandlerError):
            category, retry_after = exc.category, exc.retry_after
            # A server down or refusing everyone (a wrong key, a model not served, a base URL
            # that redirects) is the deployment's fault, not this job's: tried again later,
            # while the breaker pauses claims, instead of failing every job it was sent.
            retryable = exc.retryable or exc.provider_wide
            message = str(exc) or type(exc).__name__
            logged = message if telemetry.capture_content() else exc.loggable or message
            if retryable and exc.retry_once and job.error_category == category:
                # the previous attempt failed the same way: retried once already, now final
                retryable = False
                message += f" (final: {category} twice in a row)"
                logged += f" (final: {category} twice in a row)"
        else:
            category, retryable, retry_after = "internal", True, None
            message = logged = f"{type(exc).__name__}: {exc}"
        log.log(
            logging.ERROR if category == "internal" else logging.WARNING,
            "job %s failed (%s): %s",
            job.id,
            category,
            logged,
            exc_info=category == "internal" and not isinstance(exc, HandlerError),
            extra={"job_id": str(job.id), "error_category": category},
        )
        backoff = Backoff(0.05, 2.0)
        unsure = False  # a try whose answer was lost may have committed
        while True:
            try:
                failed = await self.repo.fail(
                    job.id,
                    self.worker_id,
                    error_category=category,
                    error_message=message,
                    retryable=retryable,
                    retry_after=retry_after,
                    started_at=job.started_at,
                )
                break
            except DatabaseUnavailable as dberr:
                unsure = True
                log.warning("recording the failure of job %s failed, will retry: %s", job.id, dberr)
                await anyio.sleep(backoff.next())
            except JobError as conflict:
                recorded = await self._recorded(job, category, message) if unsure else None
                if recorded is not None:  # an earlier try did it: its answer was lost
                    failed = recorded
                    break
                self.status.profiles[job.model_profile].discarded += 1
                log.warning("failure of job %s not recorded: %s", job.id, conflict)
                return
            except Exception as refused:
                # The database refused what the message holds (a value it cannot store):
                # recorded once more without it, rather than left running to its lease.
                bare = f"{category} (its message could not be stored: {type(refused).__name__})"
                if message == bare:
                    raise
                log.warning("recording the failure of job %s failed: %s", job.id, refused)
                message = bare
        stats = self.status.profiles[job.model_profile]
        metrics.job_failed(job, category, final=failed.status != "pending")
        if failed.status == "pending":
            stats.retried += 1
        else:
            stats.failed += 1

    async def _recorded(self, job: Job, category: str, message: str) -> Job | None:
        """The job as this run's failure left it, if a try whose answer was lost committed
        it (then the retry is refused): the row still names this run (``started_at``) with
        this failure, pending again or failed by this worker. Else None: the run was lost."""
        try:
            now = await self.repo.get(job.id)
        except Exception as exc:  # (the job deleted, the database gone again): not known
            log.warning("reading job %s back failed: %s", job.id, exc)
            return None
        failure = (category, stored_message(message))
        ours = (
            now.started_at == job.started_at and (now.error_category, now.error_message) == failure
        )
        if ours and (
            now.status == "pending" or (now.status == "failed" and now.worker_id == self.worker_id)
        ):
            return now
        return None
