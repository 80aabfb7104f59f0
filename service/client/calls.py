"""The request of each API method, shared by the sync and async clients.

Why one request table for both clients: each method is described once (``Call``: method,
path, query, body, response type, and whether it may be sent twice); the two classes differ
only in how they send. Caller mistakes that the server would answer confusingly — or not at
all — are refused here, before anything is sent: a naive datetime (which zone it meant is
unknowable), an empty filter list (it would mean "no filter": every job), a job id that is not
a UUID (``"../stats"`` would reach another route).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import httpx
import msgspec

from service.api.schemas import BatchResult, ClaimResult, CountIds, JobPage, Stats
from service.jobs.model import Job

T = TypeVar("T")
# ``wait`` and ``claim`` long-poll at most this long per request: under the 60 s idle timeout of
# common proxies and load balancers (ingress-nginx, AWS ALB), which would answer 504.
LONG_POLL_CHUNK = 50.0
TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # what an HTTP header value may carry unquoted
JOBS = "/api/v1/jobs"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    type: type[T]
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    read_timeout: float | None = None  # extra time for long-polls
    # Sending it twice does no harm (a read, or a create the idempotency key deduplicates):
    # retried after a 429/502/503/504 or a lost connection.
    repeatable: bool = False

    def describe(self) -> str:
        return f"{self.method} {self.path}"


_encode = msgspec.json.Encoder().encode


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _instant(name: str, value: datetime | None) -> str | None:
    """``value`` as RFC 3339; a naive datetime is refused here, before the server's 422."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return value.isoformat()


def _run(job_id: Job | UUID | str, body: dict[str, Any]) -> tuple[UUID | str, dict[str, Any]]:
    """A worker's call about a job it claimed: given the claimed ``Job`` itself, its
    ``started_at`` goes along and names the run, so a late call of an earlier run of the same
    job (retried, or reaped and claimed again by this worker_id) is refused, not applied."""
    if isinstance(job_id, Job):
        if job_id.started_at is not None:
            body = {**body, "started_at": job_id.started_at.isoformat()}
        return job_id.id, body
    return job_id, body


def _job(job_id: UUID | str, action: str = "") -> str:
    """The path of one job; its id must be a UUID."""
    if not isinstance(job_id, UUID):
        try:
            job_id = UUID(str(job_id))
        except ValueError:
            raise ValueError(f"job_id must be a UUID, got {str(job_id)[:60]!r}") from None
    return f"{JOBS}/{job_id}{action}"


def _filter(
    *,
    ids: Sequence[UUID | str] | None = None,
    status: Sequence[str] | None = None,
    owner_service: str | None = None,
    owner_ref: str | None = None,
    task_type: Sequence[str] | None = None,
    model_profile: Sequence[str] | None = None,
    error_category: Sequence[str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> dict[str, Any]:
    def seq(name: str, v: Sequence[Any] | str | None) -> list[Any] | None:
        if v is None:
            return None
        if isinstance(v, str):  # "failed" is one status
            return [v]
        if not v:
            raise ValueError(f"{name} must not be empty: an empty filter would match every job")
        return [str(x) for x in v]

    return _clean(
        {
            "ids": seq("ids", ids),
            "status": seq("status", status),
            "owner_service": owner_service,
            "owner_ref": owner_ref,
            "task_type": seq("task_type", task_type),
            "model_profile": seq("model_profile", model_profile),
            "error_category": seq("error_category", error_category),
            "created_after": _instant("created_after", created_after),
            "created_before": _instant("created_before", created_before),
        }
    )


class Calls:
    """The request of each API method."""

    @staticmethod
    def create(
        owner_service: str,
        task_type: str,
        model_profile: str,
        input: Mapping[str, Any] | None = None,
        *,
        owner_ref: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_after: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Call[Job]:
        body = _clean(
            {
                "owner_service": owner_service,
                "task_type": task_type,
                "model_profile": model_profile,
                "input": dict(input) if input is not None else None,
                "owner_ref": owner_ref,
                "priority": priority,
                "max_attempts": max_attempts,
                "run_after": _instant("run_after", run_after),
                "idempotency_key": idempotency_key,
            }
        )
        return Call("POST", JOBS, Job, body=body, repeatable=bool(idempotency_key))

    @staticmethod
    def create_batch(
        jobs: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any] | None = None
    ) -> Call[BatchResult]:
        body = {"jobs": list(jobs), "defaults": dict(defaults or {})}
        keyed = bool(jobs) and all(j.get("idempotency_key") for j in jobs)
        return Call("POST", f"{JOBS}/batch", BatchResult, body=body, repeatable=keyed)

    @staticmethod
    def get(job_id: UUID | str, wait_seconds: float = 0) -> Call[Job]:
        params = {"wait_seconds": wait_seconds} if wait_seconds > 0 else {}
        return Call("GET", _job(job_id), Job, params, read_timeout=wait_seconds, repeatable=True)

    @staticmethod
    def page(limit: int, cursor: str | None, flt: dict[str, Any]) -> Call[JobPage]:
        params = {**flt, "limit": limit, "cursor": cursor}
        if "ids" in params:
            params["id"] = params.pop("ids")
        return Call("GET", JOBS, JobPage, _clean(params), repeatable=True)

    @staticmethod
    def retry_where(flt: dict[str, Any], all: bool) -> Call[CountIds]:
        return Call("POST", f"{JOBS}/retry", CountIds, body={**flt, "all": all})

    @staticmethod
    def cancel_where(flt: dict[str, Any], all: bool) -> Call[CountIds]:
        return Call("POST", f"{JOBS}/cancel", CountIds, body={**flt, "all": all})

    @staticmethod
    def retry(job_id: UUID | str) -> Call[Job]:
        return Call("POST", _job(job_id, "/retry"), Job)

    @staticmethod
    def cancel(job_id: UUID | str) -> Call[Job]:
        return Call("POST", _job(job_id, "/cancel"), Job)

    @staticmethod
    def claim(
        worker_id: str,
        model_profile: str | Sequence[str],
        limit: int,
        lease_seconds: float | None,
        wait_seconds: float,
        task_type: str | Sequence[str] | None = None,
    ) -> Call[ClaimResult]:
        # Capped like wait()'s polls: a claim cut by a proxy's 60 s idle timeout (a 504) may
        # have leased jobs this worker never sees; they would wait out their leases.
        wait_seconds = min(wait_seconds, LONG_POLL_CHUNK)
        profiles = model_profile if isinstance(model_profile, str) else list(model_profile)
        types = task_type if task_type is None or isinstance(task_type, str) else list(task_type)
        body = _clean(
            {
                "worker_id": worker_id,
                "model_profile": profiles,
                "task_type": types,
                "limit": limit,
                "lease_seconds": lease_seconds,
                "wait_seconds": wait_seconds,
            }
        )
        return Call("POST", f"{JOBS}/claim", ClaimResult, body=body, read_timeout=wait_seconds)

    @staticmethod
    def heartbeat(
        job_id: Job | UUID | str, worker_id: str, lease_seconds: float | None
    ) -> Call[Job]:
        job, body = _run(job_id, _clean({"worker_id": worker_id, "lease_seconds": lease_seconds}))
        return Call("POST", _job(job, "/heartbeat"), Job, body=body)

    @staticmethod
    def complete(job_id: Job | UUID | str, worker_id: str, result: Any) -> Call[Job]:
        job, body = _run(job_id, {"worker_id": worker_id, "result": result})
        return Call("POST", _job(job, "/complete"), Job, body=body)

    @staticmethod
    def fail(
        job_id: Job | UUID | str,
        worker_id: str,
        error_category: str,
        error_message: str,
        retryable: bool,
        retry_after_seconds: float | None,
    ) -> Call[Job]:
        body = _clean(
            {
                "worker_id": worker_id,
                "error_category": error_category,
                "error_message": error_message,
                "retryable": retryable,
                "retry_after_seconds": retry_after_seconds,
            }
        )
        job, body = _run(job_id, body)
        return Call("POST", _job(job, "/fail"), Job, body=body)

    @staticmethod
    def stats() -> Call[Stats]:
        return Call("GET", "/api/v1/stats", Stats, repeatable=True)


def headers(token: str | None) -> dict[str, str]:
    """Request headers. The token is stripped (a secret file's trailing newline) and must be
    printable ASCII: otherwise httpx would refuse every request with an error quoting it."""
    out = {"Accept": "application/json"}
    token = (token or "").strip()
    if token:
        if not TOKEN_CHARS.fullmatch(token):
            raise ValueError("token must be printable ASCII without spaces (value not shown)")
        out["Authorization"] = f"Bearer {token}"
    return out


def client_options(
    base_url: str, token: str | None, timeout: httpx.Timeout, long_polls: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What both clients give their two httpx clients: one for most calls, one for long polls
    (``wait``, ``claim`` with ``wait_seconds``) with ``long_polls`` connections. Each long poll
    holds a connection for up to 50 s; in one pool, httpx's 100 connections taken by waits held
    every other call (a ``complete`` that would have ended those waits among them) until one
    returned."""
    if long_polls < 1:
        raise ValueError(f"long_polls must be at least 1, got {long_polls}")
    options = {"base_url": base_url.rstrip("/"), "headers": headers(token), "timeout": timeout}
    limits = httpx.Limits(max_connections=long_polls, max_keepalive_connections=min(long_polls, 20))
    return options, {**options, "limits": limits}


def timeouts(seconds: float) -> httpx.Timeout:
    """``seconds`` for reads, writes and pool waits; connecting gets at most 10 s (a host that
    does not answer a SYN in 10 s will not in 75). Zero or less is refused here: httpx would
    take it as "give up at once" and report a misleading connection error."""
    if not seconds > 0:
        raise ValueError(f"timeout must be more than 0 seconds, got {seconds!r}")
    return httpx.Timeout(seconds, connect=min(seconds, 10.0))


def request_kwargs(call: Call[Any], timeout: httpx.Timeout) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"params": call.params or None}
    if call.body is not None or call.method == "POST":
        kwargs["content"] = _encode(call.body if call.body is not None else {})
        kwargs["headers"] = {"Content-Type": "application/json"}
    if call.read_timeout:
        # A long-poll holds its connection for up to read_timeout: others waiting for one
        # from the pool may wait as long (many concurrent waits would time out otherwise).
        read = (timeout.read or 30.0) + call.read_timeout
        pool = (timeout.pool or 30.0) + call.read_timeout
        kwargs["timeout"] = httpx.Timeout(timeout.connect, read=read, write=timeout.write,
                                          pool=pool)  # fmt: skip
    return kwargs
