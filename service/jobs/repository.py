"""The job repository: the only code that runs job SQL, one method per named query.

Why owner checks live in SQL (``WHERE status = 'running' AND worker_id = %s``): a late or
foreign complete/fail/heartbeat must change nothing even under races, so the guard and the
write are one statement; the method then reads the row once to say *why* it was refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
import uuid_utils.compat as uuid_compat

from service import metrics
from service.db import Database, DatabaseError, Row, jsonb
from service.jobs import states
from service.jobs.errors import IdempotencyConflict, JobNotFound, StateConflict
from service.jobs.model import Job, JobFilter, NewJob
from service.logs import reason

log = logging.getLogger("ai_service.jobs")

REAPER_LOCK_KEY = 0x61695F72656170  # "ai_reap"
LIST_PAGE_BYTES = 16 << 20  # a page of GET /jobs ends before this much input and result
CLAIM_REPLY_BYTES = LIST_PAGE_BYTES  # and a claim's answer before this much input
_EXACT = msgspec.json.Decoder(float_hook=Decimal)


def _as_stored(value: Any) -> Any:
    """``value`` with its numbers as exact decimals: jsonb keeps a number's decimal value, so
    ``1e23`` comes back as the integer ``10**23``, which Python finds unequal to the float
    ``1e23`` it was sent as. Comparing inputs this way, an idempotent repeat of such an input
    is the same request, not a conflict."""
    return _EXACT.decode(msgspec.json.encode(value))


def new_id() -> UUID:
    """UUIDv7: time-ordered, so ids double as the keyset for listing newest first."""
    return uuid_compat.uuid7()


class Reaped(NamedTuple):
    """A job the reaper took back: ``status`` is pending (requeued) or failed (no attempts
    left); profile and task type label the failed-attempt metric; ``lost_worker`` is the
    worker whose lease expired (for the log line)."""

    id: UUID
    status: str
    model_profile: str
    task_type: str
    lost_worker: str | None = None


def _jobs(rows: list[Row]) -> list[Job]:
    return [Job.from_row(r) for r in rows]


def _claim_params(
    model_profile: str,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    types: tuple[Sequence[str] | None, Sequence[str]] | None,
) -> dict[str, object]:
    """A claim's parameters; ``types`` (only_types, skip_types) for the statements by type."""
    params: dict[str, object] = {
        "model_profile": model_profile,
        "worker_id": worker_id,
        "limit": limit,
        "lease_seconds": lease_seconds,
    }
    if types is not None:
        only_types, skip_types = types
        params["only_types"] = list(only_types) if only_types is not None else None
        params["skip_types"] = list(skip_types)
    return params


def _claimed_job(row: Row) -> tuple[Job | None, str]:
    """A claimed row as a ``Job``, or ``None`` and why it cannot be read. A ``trace_context``
    that is not an object of strings is only tracing metadata: the job runs untraced."""
    try:
        return Job.stored(row), ""
    except msgspec.ValidationError as exc:
        problem = str(exc)
    if row.get("trace_context") is None:
        return None, problem
    try:
        job = Job.stored({**row, "trace_context": None})
    except msgspec.ValidationError as exc:
        return None, str(exc)
    log.warning(
        "job %s has an unreadable trace_context (%s); it runs untraced",
        row["id"],
        problem,
        extra={"job_id": str(row["id"])},
    )
    return job, ""


def stored_message(error_message: str) -> str:
    """A failure's message as ``fail`` stores it: its first 4,000 characters, a NUL or a
    lone surrogate shown replaced."""
    message = error_message[:4000].replace("\x00", "\ufffd")
    return message.encode("utf-8", "replace").decode("utf-8")


class JobRepository:
    def __init__(
        self,
        db: Database,
        *,
        default_max_attempts: int = 3,
        backoff_base: float = 5.0,
        backoff_max: float = 600.0,
    ) -> None:
        self.db = db
        self.default_max_attempts = default_max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max

    # --- submission ---------------------------------------------------------------------
    def _asked(self, new: NewJob) -> tuple[Any, ...]:
        """What an idempotent repeat must ask for again (``run_after`` may differ)."""
        return (new.task_type, new.model_profile, new.owner_ref, _as_stored(new.input),
                new.priority, new.max_attempts or self.default_max_attempts)  # fmt: skip

    def _same_request(self, new: NewJob, job: Job) -> bool:
        stored = (job.task_type, job.model_profile, job.owner_ref, _as_stored(job.input),
                  job.priority, job.max_attempts)  # fmt: skip
        return self._asked(new) == stored

    async def create(
        self, new: NewJob, *, trace_context: dict[str, str] | None = None
    ) -> tuple[Job, bool]:
        """Insert one job; returns (job, created). A repeated idempotency key with the same
        body returns the existing job with ``created=False``; a different body raises."""
        params = {
            "owner_service": new.owner_service,
            "owner_ref": new.owner_ref,
            "task_type": new.task_type,
            "model_profile": new.model_profile,
            "priority": new.priority,
            "max_attempts": new.max_attempts or self.default_max_attempts,
            "input": jsonb(new.input),
            "run_after": new.run_after,
            "idempotency_key": new.idempotency_key,
            "trace_context": jsonb(trace_context) if trace_context else None,
        }
        while True:
            row = await self.db.fetchrow("create_job", {"id": new_id(), **params})
            if row is not None:
                return Job.from_row(row), True
            assert new.idempotency_key is not None  # only a key conflict inserts nothing
            existing = await self._by_keys(new.owner_service, [new.idempotency_key])
            job = existing.get(new.idempotency_key)
            if job is None:  # the job holding the key was deleted meanwhile (retention)
                continue
            if not self._same_request(new, job):
                raise IdempotencyConflict(new.idempotency_key, job.id)
            return job, False

    async def _by_keys(self, owner_service: str, keys: list[str]) -> dict[str, Job]:
        rows = await self.db.fetch(
            "get_jobs_by_idempotency_keys", {"owner_service": owner_service, "keys": keys}
        )
        return {r["idempotency_key"]: Job.from_row(r) for r in rows}

    async def create_batch(
        self,
        jobs: Sequence[NewJob],
        *,
        trace_contexts: Sequence[dict[str, str] | None] | None = None,
    ) -> list[tuple[UUID, bool]]:
        """Insert many jobs in one statement (one transaction, one NOTIFY per profile).

        Returns ``(id, created)`` per input, in order; idempotent repeats map to the existing
        job; a repeated key with a different body raises ``IdempotencyConflict`` naming that
        job, and nothing of the batch is written. A batch with keys is one transaction: a
        concurrent request can take a key between the check and the insert (the insert waits
        for it, then skips that row), and its job is then judged like any existing one —
        the same body is an idempotent repeat, a different one rolls the whole batch back.
        """
        keyed: dict[tuple[str, str], int] = {}
        for i, j in enumerate(jobs):
            if j.idempotency_key is not None:
                k = (j.owner_service, j.idempotency_key)
                if k in keyed and not self._same_new(jobs[keyed[k]], j):
                    raise IdempotencyConflict(j.idempotency_key, UUID(int=0))  # within the batch
                keyed.setdefault(k, i)
        ids = [new_id() for _ in jobs]
        tcs = trace_contexts or [None] * len(jobs)
        existing: dict[tuple[str, str], Job] = {}
        # Without keys the one INSERT is atomic by itself: no transaction round trips.
        async with self.db.transaction() if keyed else self.db.session() as s:

            async def load(taken: list[tuple[str, str]]) -> None:
                """Read the jobs holding ``taken`` keys; refuse the batch on a different body."""
                for owner in {o for o, _ in taken}:
                    keys = [key for o, key in taken if o == owner]
                    rows = await s.fetch(
                        "get_jobs_by_idempotency_keys", {"owner_service": owner, "keys": keys}
                    )
                    existing.update({(owner, r["idempotency_key"]): Job.from_row(r) for r in rows})
                for k in taken:
                    if k in existing and not self._same_request(jobs[keyed[k]], existing[k]):
                        raise IdempotencyConflict(k[1], existing[k].id)

            await load(list(keyed))
            fresh = {i for k, i in keyed.items() if k not in existing}

            # In key order: two batches taking overlapping keys then wait for each other in
            # the same order instead of deadlocking (one of them aborted: a 503).
            def by_key(i: int) -> tuple[str, str]:
                return jobs[i].owner_service, jobs[i].idempotency_key or ""

            todo = sorted(
                (i for i, j in enumerate(jobs) if j.idempotency_key is None or i in fresh),
                key=by_key,
            )
            inserted: set[UUID] = set()
            while todo:
                params: dict[str, Any] = {
                    "ids": [ids[i] for i in todo],
                    "owner_services": [jobs[i].owner_service for i in todo],
                    "owner_refs": [jobs[i].owner_ref for i in todo],
                    "task_types": [jobs[i].task_type for i in todo],
                    "model_profiles": [jobs[i].model_profile for i in todo],
                    "priorities": [jobs[i].priority for i in todo],
                    "max_attempts": [
                        jobs[i].max_attempts or self.default_max_attempts for i in todo
                    ],
                    "inputs": [jsonb(jobs[i].input) for i in todo],
                    "run_afters": [jobs[i].run_after for i in todo],
                    "idempotency_keys": [jobs[i].idempotency_key for i in todo],
                    "trace_contexts": [jsonb(tcs[i]) if tcs[i] else None for i in todo],
                }
                rows = await s.fetch("create_jobs", params, prepare=False)
                inserted |= {r["id"] for r in rows}
                # Rows skipped: a concurrent request committed their keys after our check.
                raced = [
                    k for k, i in keyed.items() if k not in existing and ids[i] not in inserted
                ]
                await load(raced)
                # A key taken and freed again meanwhile (its job deleted) is simply retried.
                todo = sorted((keyed[k] for k in raced if k not in existing), key=by_key)
        out: list[tuple[UUID, bool]] = []
        for i, j in enumerate(jobs):
            if j.idempotency_key is None:
                out.append((ids[i], True))
                continue
            k = (j.owner_service, j.idempotency_key)
            job = existing.get(k)
            out.append((job.id, False) if job else (ids[keyed[k]], keyed[k] == i))
        return out

    def _same_new(self, a: NewJob, b: NewJob) -> bool:
        """Two items of one batch with the same key ask for the same job: judged as a repeat
        against a stored job is (``_same_request``), so a batch does not refuse what a second
        request would accept (``max_attempts`` left out in one, the default in the other)."""
        return self._asked(a) == self._asked(b)

    # --- reading ------------------------------------------------------------------------
    async def get(self, job_id: UUID) -> Job:
        row = await self.db.fetchrow("get_job", {"id": job_id})
        if row is None:
            raise JobNotFound(job_id)
        return Job.from_row(row)

    async def list_jobs(
        self,
        flt: JobFilter,
        *,
        limit: int = 100,
        cursor: UUID | None = None,
        max_bytes: int = LIST_PAGE_BYTES,
    ) -> tuple[list[Job], UUID | None]:
        """One page, newest first: up to ``limit`` jobs, fewer when their inputs and results
        pass ``max_bytes``; the cursor for the next page is None on the last one."""
        params = {**flt.params(), "cursor": cursor, "limit": limit + 1, "max_bytes": max_bytes}
        rows = await self.db.fetch("list_jobs", params, prepare=False)
        listed = rows[0]["listed_rows"] if rows else 0
        jobs = _jobs(rows[:limit])
        return jobs, (jobs[-1].id if listed > len(jobs) else None)

    async def seconds_until_due(
        self,
        model_profile: str,
        *,
        only_types: Sequence[str] | None = None,
        skip_types: Sequence[str] = (),
    ) -> float | None:
        """Seconds until the earliest pending job of a profile (of ``only_types`` if given,
        never of ``skip_types``) is due (<= 0: due now), on the database's clock; None when
        nothing is pending. The idle worker sleeps this long; a long-polling claim wakes then
        (no NOTIFY comes when a scheduled or backed-off job falls due)."""
        row = await self.db.fetchrow(
            "next_due_in",
            {
                "model_profile": model_profile,
                "only_types": None if only_types is None else list(only_types),
                "skip_types": list(skip_types),
            },
        )
        return None if row is None or row["seconds"] is None else float(row["seconds"])

    # --- worker side --------------------------------------------------------------------
    async def claim(
        self,
        model_profile: str,
        worker_id: str,
        *,
        limit: int,
        lease_seconds: float,
        only_types: Sequence[str] | None = None,
        skip_types: Sequence[str] = (),
        connected: Callable[[], None] | None = None,
    ) -> list[Job]:
        """Claim up to ``limit`` due jobs of one profile, SKIP LOCKED: of ``only_types`` if
        given (an external worker's), never of ``skip_types`` (left to external workers).
        ``connected`` is called once a connection is in hand: the leases begin after that, not
        before a wait for the pool (a worker that counted from before took a wait out of a
        database restart for lease time and stopped its fresh jobs as lost)."""
        if limit <= 0:
            return []
        typed = only_types is not None or bool(skip_types)  # (see claim_jobs_of_types)
        query = "claim_jobs_of_types" if typed else "claim_jobs"
        types = (only_types, skip_types) if typed else None
        params = _claim_params(model_profile, worker_id, limit, lease_seconds, types)
        # serves many jobs, never inside a span: see ``Session``
        async with self.db.session() as session:
            if connected is not None:
                connected()
            rows = await session.fetch(query, params, traced=False)
        return await self._claimed(rows, worker_id)

    async def claim_for_reply(
        self,
        model_profile: str,
        worker_id: str,
        *,
        limit: int,
        lease_seconds: float,
        only_types: Sequence[str] | None,
        max_bytes: int,
    ) -> tuple[list[Job], int]:
        """``claim`` for ``POST /jobs/claim``, whose answer carries the jobs whole: it also
        stops before their inputs pass ``max_bytes`` as stored (the first job always comes).
        Returns the jobs and their inputs' stored bytes (what is left of a budget)."""
        if limit <= 0 or max_bytes <= 0:
            return [], 0
        query = "claim_jobs_within" if only_types is None else "claim_jobs_of_types_within"
        types = None if only_types is None else (only_types, ())
        params = _claim_params(model_profile, worker_id, limit, lease_seconds, types)
        params["max_bytes"] = max_bytes
        rows = await self.db.fetch(query, params, traced=False)
        used = sum(int(r["input_bytes"]) for r in rows)
        return await self._claimed(rows, worker_id), used

    async def _claimed(self, rows: list[Row], worker_id: str) -> list[Job]:
        jobs: list[Job] = []
        for row in rows:
            job, problem = _claimed_job(row)
            if job is None:
                await self._fail_unreadable(row, worker_id, problem)
            else:
                jobs.append(job)
        # UPDATE ... RETURNING does not keep the CTE's order; callers start jobs in this order.
        return sorted(jobs, key=lambda j: (-j.priority, j.run_after, j.id))

    async def _fail_unreadable(self, row: Row, worker_id: str, problem: str) -> None:
        """Fail a claimed job whose stored values cannot be read, at once and for good: left
        running, it would hold its whole claim batch until the lease expired, again on every
        retry. The API validates what it writes and, since migration 0004, the database
        refuses such rows too; one can still arrive where triggers do not fire (a restore or a
        replica applying rows with triggers off). If failing it fails (the job cancelled
        meanwhile, the database gone), the rest of the claim still reaches its caller: the
        row, unknown to the worker and not renewed, comes back when its lease is reaped."""
        message = f"the stored job cannot be read: {problem}"
        try:
            await self.fail(
                row["id"], worker_id, error_category="invalid_input", error_message=message,
                retryable=False,
            )  # fmt: skip
        except (StateConflict, JobNotFound, DatabaseError) as exc:
            log.warning("job %s cannot be read and failing it failed: %s", row["id"], reason(exc))
            return
        log.error(
            "job %s failed at claim: its stored row cannot be read (%s)",
            row["id"],
            problem,
            extra={"job_id": str(row["id"])},
        )
        failed = Reaped(row["id"], "failed", row["model_profile"], row["task_type"])
        metrics.job_failed(failed, "invalid_input", final=True)

    async def heartbeat(
        self,
        worker_id: str,
        ids: Sequence[UUID],
        *,
        lease_seconds: float | None,
        default_seconds: float | None,
        started_at: datetime | None = None,
    ) -> dict[UUID, float]:
        """Extend leases in one statement (``lease_seconds`` None: by as long as the last
        grant, ``default_seconds`` if that cannot be told: one of the two must be given);
        returns the ids still held (the rest were lost, or their leases were ended early),
        each with its seconds left on the database's clock. ``started_at`` (one job's, from
        an external worker) renews only that run of it."""
        if lease_seconds is None and default_seconds is None:
            raise ValueError("heartbeat needs lease_seconds or default_seconds")
        if not ids:
            return {}
        params = {
            "worker_id": worker_id,
            "ids": list(ids),
            "lease_seconds": lease_seconds,
            "default_seconds": default_seconds,
            "started_at": started_at,
        }
        rows = await self.db.fetch("heartbeat_jobs", params)
        return {r["id"]: r["seconds_left"] for r in rows}

    async def refusal(self, job_id: UUID, action: str, worker_id: str | None) -> StateConflict:
        """Why ``worker_id``'s ``action`` on a job changed nothing (the 409 of a late or
        foreign call); raises ``JobNotFound`` for a job that does not exist."""
        job = await self.get(job_id)
        if states.allowed(action, job.status) and worker_id is not None:
            reason = f"the lease is held by another worker ({job.worker_id})"
            if job.worker_id == worker_id:  # held by this id, but not by this run
                reason = (
                    "this run of the job ended: its lease was given up, or the job was "
                    "claimed again since (retried, or reaped); or started_at is not the "
                    "claim's as received"
                )
        else:
            reason = f"{action} needs status {'|'.join(sorted(states.ACCEPTS[action]))}"
        return StateConflict(job_id, action, job.status, reason)

    async def complete(
        self, job_id: UUID, worker_id: str, result: Any, *, started_at: datetime | None = None
    ) -> Job:
        """Store a result. With ``started_at`` (the claimed job's), only in that run of the
        job, as ``complete_many`` does."""
        params = {
            "id": job_id,
            "worker_id": worker_id,
            "result": jsonb(result),
            "started_at": started_at,
        }
        row = await self.db.fetchrow("complete_job", params)
        if row is None:
            raise await self.refusal(job_id, "complete", worker_id)
        return Job.from_row(row)

    async def complete_many(
        self,
        worker_id: str,
        items: Sequence[tuple[UUID, Any]],
        started: Sequence[datetime | None] | None = None,
    ) -> set[UUID]:
        """Store many results in one statement; returns the ids this worker still held.
        ``started`` (the runs' ``started_at``, parallel to ``items``) stores a result only in
        the run that produced it, not in a later claim of the same job by this worker."""
        if not items:
            return set()
        rows = await self.db.fetch(
            "complete_jobs",
            {
                "worker_id": worker_id,
                "ids": [i for i, _ in items],
                "results": [jsonb(r) for _, r in items],
                "started": list(started) if started is not None else [None] * len(items),
            },
            traced=False,  # serves many jobs, never inside a span: see ``Session``
        )
        return {r["id"] for r in rows}

    async def completed_runs(
        self, worker_id: str, runs: Sequence[tuple[UUID, datetime | None]]
    ) -> set[UUID]:
        """Of ``runs`` (a job id, its run's ``started_at``), those this worker completed."""
        if not runs:
            return set()
        params = {
            "worker_id": worker_id,
            "ids": [i for i, _ in runs],
            "started": [s for _, s in runs],
        }
        return {r["id"] for r in await self.db.fetch("completed_runs", params, traced=False)}

    async def fail(
        self,
        job_id: UUID,
        worker_id: str,
        *,
        error_category: str,
        error_message: str,
        retryable: bool,
        retry_after: float | None = None,
        started_at: datetime | None = None,
    ) -> Job:
        """Record a failure; retryable ones with attempts left return to pending after backoff.
        With ``started_at``, only in that run of the job (see ``complete_many``).
        A NUL or a lone surrogate in the message (a provider's body quoted in it) is shown
        replaced: PostgreSQL text cannot hold a NUL, psycopg cannot encode a surrogate, and
        refusing the write would leave the job to its lease."""
        message = stored_message(error_message)
        row = await self.db.fetchrow(
            "fail_job",
            {
                "id": job_id,
                "worker_id": worker_id,
                "started_at": started_at,
                "error_category": error_category,
                "error_message": message,
                "retryable": retryable,
                "retry_after": retry_after,
                "backoff_base": self.backoff_base,
                "backoff_max": self.backoff_max,
            },
        )
        if row is None:
            raise await self.refusal(job_id, "fail", worker_id)
        return Job.from_row(row)

    async def release(self, worker_id: str, ids: Sequence[UUID]) -> set[UUID]:
        """Hand unfinished jobs back to pending without counting the attempt (shutdown)."""
        if not ids:
            return set()
        rows = await self.db.fetch("release_jobs", {"worker_id": worker_id, "ids": list(ids)})
        return {r["id"] for r in rows}

    async def release_orphans(
        self, worker_id: str, model_profile: str, known: Sequence[UUID]
    ) -> set[UUID]:
        """Release ``model_profile``'s jobs held by ``worker_id`` other than ``known``: what
        a claim committed whose reply never arrived (see ``ClaimLoop``)."""
        rows = await self.db.fetch(
            "release_orphans",
            {"worker_id": worker_id, "model_profile": model_profile, "known": list(known)},
        )
        return {r["id"] for r in rows}

    async def reap(self, *, limit: int = 1000) -> list[Reaped] | None:
        """Return expired leases to pending (or failed when out of attempts).

        Returns None when another process holds the reaper lock (one reaper at a time).
        """
        async with self.db.transaction() as tx:
            lock = await tx.fetchrow("try_reaper_lock", {"key": REAPER_LOCK_KEY})
            if not lock or not lock["locked"]:
                return None
            rows = await tx.fetch("reap_expired", {"limit": limit})
        return [
            Reaped(r["id"], r["status"], r["model_profile"], r["task_type"], r["lost_worker"])
            for r in rows
        ]

    async def expire_lease(self, worker_id: str, job_id: UUID, started_at: datetime | None) -> bool:
        """End this worker's lease of the run of ``job_id`` that started at ``started_at``
        now (the reaper takes it from there); a newer run of it keeps its own."""
        params = {"id": job_id, "worker_id": worker_id, "started_at": started_at}
        return await self.db.execute("expire_lease", params) > 0

    async def seconds_until_lease_expiry(self) -> float | None:
        """Seconds until the earliest lease of a running job expires (<= 0: expired), on the
        database's clock; None when nothing runs. The reaper sleeps at most this long."""
        row = await self.db.fetchrow("next_lease_expiry", traced=False)
        return None if row is None or row["seconds"] is None else float(row["seconds"])

    async def purge_finished(self, *, older_than: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` jobs that finished more than ``older_than`` seconds ago."""
        return await self.db.execute(
            "purge_finished", {"older_than": older_than, "limit": limit}, traced=False
        )

    # --- operator actions ---------------------------------------------------------------
    async def retry(self, job_id: UUID) -> Job:
        row = await self.db.fetchrow("retry_job", {"id": job_id})
        if row is None:
            raise await self.refusal(job_id, "retry", None)
        return Job.from_row(row)

    async def retry_where(self, flt: JobFilter) -> list[UUID]:
        rows = await self.db.fetch("retry_jobs", flt.params(), prepare=False)
        return [r["id"] for r in rows]

    async def cancel_where(self, flt: JobFilter) -> list[UUID]:
        rows = await self.db.fetch("cancel_jobs", flt.params(), prepare=False)
        return [r["id"] for r in rows]
