"""The worker process: wires the listener, one claim loop per profile, the executors, the
batch completer, the lease keeper, the reaper and the HTTP endpoints into one anyio task tree.

``run_worker_process`` is ``ai-service worker``; ``worker_service`` gives the same worker as a
``Service`` for ``service.runtime.supervise`` (``ai-service dev`` runs it beside the API).
The first SIGTERM/SIGINT calls ``Worker.stop``: claiming stops at once, in-flight jobs get
``WORKER_SHUTDOWN_GRACE`` to finish, the rest are released, queued results are stored, exit 0.
A second signal cancels the tree; the final writes still run, bounded, on what is left.
"""

from __future__ import annotations

import gc
import logging
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import anyio
from anyio.abc import TaskGroup

from service import metrics
from service.config import ConfigError, Settings
from service.db import Database, DatabaseUnavailable, open_database
from service.handlers.base import HandlerRegistry
from service.jobs import Job, JobRepository
from service.jobs.reaper import Reaper
from service.logs import ReadinessLog, reason
from service.metrics.export import metrics_routes
from service.runtime import Service, supervise
from service.serve import EmbeddedServer, bound_port
from service.worker import shutdown
from service.worker.cancellation import Running
from service.worker.claimer import ClaimLoop
from service.worker.completer import Completer
from service.worker.executor import Executor
from service.worker.http import make_worker_server
from service.worker.lease import LeaseKeeper
from service.worker.listener import Listener
from service.worker.registry import build_registry, close_all, resolve_profiles
from service.worker.status import ProfileStats, WorkerStatus

log = logging.getLogger("ai_service.worker")


def process_worker_id(base: str) -> str:
    """Unique per process: WORKER_ID defaults to the hostname, which processes may share."""
    return f"{base}/{secrets.token_hex(4)}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        profiles: Sequence[str],
        registry: HandlerRegistry,
        *,
        clients: Sequence[Any] = (),
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.profiles = list(dict.fromkeys(profiles))
        self.registry = registry
        self.clients = list(clients)
        self.worker_id = process_worker_id(settings.worker_id)
        self.status = WorkerStatus(
            self.worker_id,
            {p: ProfileStats(capacity=settings.claim_limit(p)) for p in self.profiles},
        )
        metrics.watch_worker(self.status)
        metrics.labels.profiles.allow(self.profiles)  # served here: never reported as "other"
        metrics.labels.task_types.allow(t for p in self.profiles for t in registry.task_types(p))
        if not (settings.worker_notify and self.profiles):
            self.status.listener.state = "disabled"
        self.running = Running()
        self.server: EmbeddedServer = make_worker_server(
            self, settings.worker_http_host, settings.worker_http_port, metrics_routes(settings)
        )
        self.server.listen("WORKER_HTTP_HOST, WORKER_HTTP_PORT")  # a busy port: one line, now
        self._db: Database | None = None
        self._loops: dict[str, ClaimLoop] = {}
        self._stop_deadline: float | None = None
        self._stopped = anyio.Event()
        self._executor: Executor | None = None
        self._completer: Completer | None = None
        self._repo: JobRepository | None = None
        self._keeper: LeaseKeeper | None = None
        self._stranded: list[Job] = []  # jobs the last final writes could not hand back
        self._final_deadline: float | None = None  # (anyio clock) of the final writes
        self._final_done = False
        self._readiness_log = ReadinessLog(log)

    # --- control ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Graceful stop: claim nothing more, let in-flight jobs finish within the grace."""
        if self._stop_deadline is not None:
            return
        unsaved = len(self._completer) if self._completer is not None else 0
        log.info("worker %s stopping: draining %d running jobs and %d results not yet stored",
                 self.worker_id, len(self.running), unsaved)  # fmt: skip
        self._stop_deadline = time.monotonic() + self.settings.worker_shutdown_grace
        self.status.state = "draining"
        for loop in self._loops.values():
            loop.stop()
        self._stopped.set()

    @property
    def http_port(self) -> int | None:
        return bound_port(self.server) if self.server.started else None

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: running, PostgreSQL answers, the listener is connected. The probe is open:
        a failure is named, its driver message (host, user) only logged."""
        body: dict[str, Any] = {"worker_id": self.worker_id, "state": self.status.state}
        problems = [] if self.status.state == "running" else [f"the worker is {self.status.state}"]
        by_design = bool(problems)  # starting, draining or stopped
        driver = ""
        try:
            if self._db is None:
                raise DatabaseUnavailable("not connected yet")
            await self._db.ping()
            body["database"] = "ok"
        except DatabaseUnavailable as exc:
            driver = f" ({reason(exc)})"
            body["database"] = "unavailable"
            problems.append("PostgreSQL is not reachable")
        body["listener"] = self.status.listener.state
        if self.status.listener.state == "disconnected":
            problems.append("the LISTEN connection is down")
        body["status"] = "unavailable" if problems else "ok"
        if problems:
            expected = by_design and len(problems) == 1
            self._readiness_log.not_ready("; ".join(problems) + driver, expected=expected)
            body = {"error": "not_ready", "detail": "; ".join(problems), **body}
        else:
            self._readiness_log.ready()
        return not problems, body

    # --- the task tree ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            self._db = await open_database(
                self.database_url,
                max_size=self.settings.db_pool_size,
                timeout=self.settings.db_pool_timeout,
                statement_timeout=self.settings.db_statement_timeout,
            )
            await self._run(self._db)
        finally:
            with anyio.CancelScope(shield=True):
                await self._final_writes()
                shutdown.report_stranded(self._stranded, self.settings.worker_lease_timeout)
                if self._db is not None:
                    with anyio.move_on_after(5):
                        await self._db.close()
                await close_all(self.clients)
            self.status.state = "stopped"
            log.info("worker %s stopped", self.worker_id)

    async def _run(self, db: Database) -> None:
        s = self.settings
        repo = self._repo = JobRepository(
            db,
            default_max_attempts=s.job_max_attempts,
            backoff_base=s.retry_backoff_base,
            backoff_max=s.retry_backoff_max,
        )
        lease = s.worker_lease_timeout
        completer = self._completer = Completer(repo, self.worker_id, self.status)
        reaper = Reaper(repo, lease_seconds=lease, retention=self.settings.job_retention)
        executor = self._executor = Executor(
            registry=self.registry,
            repo=repo,
            worker_id=self.worker_id,
            running=self.running,
            completer=completer,
            status=self.status,
            on_slot_freed=lambda p: self._loops[p].slot_freed(),
            on_lease_ended=lambda: reaper.lease_ends_in(0),
        )
        for p in self.profiles:
            self._loops[p] = ClaimLoop(
                p,
                repo=repo,
                worker_id=self.worker_id,
                executor=executor,
                stats=self.status.profiles[p],
                lease_seconds=lease,
                poll_interval=s.worker_poll_interval,
                skip_types=s.worker_external_task_types,
                health_check=self.registry.health_check(p),
            )
        keeper = self._keeper = LeaseKeeper(
            repo, self.worker_id, self.running, lease_seconds=lease,
            also_held=completer.pending_ids,
        )  # fmt: skip
        background: list[Callable[[], Any]] = [
            completer.run,
            keeper.run,
            reaper.run,
        ]
        if s.worker_notify and self.profiles:
            listener = Listener(
                self.database_url,
                self.profiles,
                status=self.status.listener,
                on_wake=lambda p: self._loops[p].notify(),
                on_cancel=self._cancel,
                on_connect=self._catch_up,
            )
            background.append(listener.run)
        log.info(
            "worker %s serving %s",
            self.worker_id,
            ", ".join(f"{p} (capacity {self.status.profiles[p].capacity})" for p in self.profiles)
            or "no profiles",
            extra={"worker_id": self.worker_id},
        )

        async with anyio.create_task_group() as tg:
            tg.start_soon(self.server.serve, name="worker http")
            scopes = [_spawn(tg, fn) for fn in background]
            if self._stop_deadline is None:
                self.status.state = "running"
            async with anyio.create_task_group() as executors:
                executor.bind(executors)
                async with anyio.create_task_group() as claimers:
                    for loop in self._loops.values():
                        if self._stop_deadline is not None:
                            loop.stop()
                        claimers.start_soon(loop.run, name=f"claim {loop.profile}")
                    await self._stopped.wait()
                assert self._stop_deadline is not None
                await shutdown.drain(self.running, self._stop_deadline)
                executor.close()
            await self._final_writes()
            for scope in scopes:
                scope.cancel()
            self.server.should_exit = True

    async def _final_writes(self) -> None:
        """Store queued results, then hand back every job not finished here (after the grace,
        or at once after a hard exit; a second call finds nothing left, or has what is left
        of the first's ``FINAL_WRITES_TIMEOUT``). Storing results has half of it at most: a
        result the database keeps refusing must not use up the time the release needs, and
        its job is released too, to run again rather than wait out its lease and lose an
        attempt."""
        completer, executor, repo = self._completer, self._executor, self._repo
        if completer is None or executor is None or repo is None or self._final_done:
            return
        if self._final_deadline is None:  # one bound for both calls: the second (at exit)
            # redid the whole 10 s on a database that stopped answering, past the pod's grace
            self._final_deadline = anyio.current_time() + shutdown.FINAL_WRITES_TIMEOUT
        deadline = self._final_deadline
        half = shutdown.FINAL_WRITES_TIMEOUT / 2
        if len(completer):
            with anyio.move_on_after(min(half, deadline - anyio.current_time())):
                await completer.drain()

        def unfinished() -> list[Job]:
            left = {j.id: j for j in (*executor.to_release, *(e.job for e in self.running))}
            left.update((job.id, job) for job in completer.queued_jobs())
            return list(left.values())

        released = False
        if anyio.current_time() >= deadline:  # the first call used the time up
            self._stranded = unfinished()
            return
        with anyio.move_on_after(deadline - anyio.current_time()):
            await shutdown.release(repo, self.worker_id, unfinished, self.status, results=completer)
            released = True
            executor.to_release.clear()
            await shutdown.release_unknown(repo, self.worker_id, self.status)
            self._final_done = True
        self._stranded = [] if released else unfinished()  # reported once, at exit

    def _cancel(self, job_id: UUID, started_us: int | None) -> None:
        if started_us is None:
            self.running.cancel(job_id, "cancelled")
        else:  # taken back to pending (a retry, a reap): only the run it names is stopped
            self.running.cancel(job_id, "lost", started_us=started_us)

    def _catch_up(self) -> None:
        """The listener (re)connected: what was notified while it was away is gone. The claim
        loops claim once; the lease keeper renews at once, which finds the jobs cancelled or
        taken back meanwhile and stops them (they would run on until the next renewal)."""
        for loop in self._loops.values():
            loop.notify()
        if self._keeper is not None:
            self._keeper.renew_soon()


def _spawn(tg: TaskGroup, fn: Callable[[], Any]) -> anyio.CancelScope:
    """Start ``fn`` in ``tg`` under its own cancel scope (returned, to stop it alone)."""
    scope = anyio.CancelScope()

    async def runner() -> None:
        with scope:
            await fn()

    tg.start_soon(runner, name=getattr(fn, "__qualname__", "background"))
    return scope


def _make_worker(
    settings: Settings,
    database_url: str,
    profiles: Sequence[str],
    registry: HandlerRegistry | None,
    *,
    require_profiles: bool,
) -> Worker:
    """The profiles are settled before the ``Worker`` binds its HTTP port: a worker with none
    to serve is refused as that, not as the busy port a second worker on the host finds."""
    clients: list[Any] = []
    if registry is None:
        registry, clients = build_registry(settings)
    chosen = resolve_profiles(profiles, settings, registry)
    if require_profiles and not chosen:
        raise ConfigError(
            "the worker has no profiles to serve: pass --profile, set WORKER_PROFILES, or "
            "configure LLM_BASE_URL / VOXTRAL_BASE_URL"
        )
    return Worker(settings, database_url, chosen, registry, clients=clients)


def worker_service(
    settings: Settings,
    database_url: str,
    profiles: Sequence[str],
    registry: HandlerRegistry | None = None,
) -> Service:
    """The worker as a supervised service (``ai-service dev`` runs it beside the API)."""
    worker = _make_worker(settings, database_url, profiles, registry, require_profiles=False)
    if not worker.profiles:
        log.warning("the worker serves no profiles: no handler is configured")
    return Service("worker", worker.run, worker.stop, stage=0)


def run_worker_process(
    settings: Settings,
    database_url: str,
    profiles: Sequence[str],
    registry: HandlerRegistry | None = None,
) -> int:
    """``ai-service worker``: run until SIGTERM/SIGINT; returns the exit code."""
    try:
        worker = _make_worker(settings, database_url, profiles, registry, require_profiles=True)
    except ConfigError as exc:
        print(f"ai-service: configuration error: {exc}", file=sys.stderr)
        return 2
    # What is imported and built by now lives as long as the process: take it out of the cyclic
    # collector's reach, so the collections that a busy worker triggers (it makes thousands of
    # short-lived rows, jobs and tasks a second) stop rescanning it (~20 % less CPU per job).
    gc.collect()
    gc.freeze()
    return anyio.run(supervise, [Service("worker", worker.run, worker.stop, stage=0)])
