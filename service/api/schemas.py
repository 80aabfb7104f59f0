"""Request and response bodies of the HTTP API, as msgspec Structs.

Why separate Structs from ``service.jobs.model``: the wire contract (what a caller may send,
what the OpenAPI document promises) is versioned with the API, while the job model follows the
table. Every request Struct forbids unknown fields, so a typo (``max_attempt``) is a 422 naming
the field instead of a silently ignored value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec

from service.jobs.model import (
    Attempts,
    IdemKey,
    Instant,
    Job,
    JobFilter,
    Name,
    NewJob,
    Priority,
    Profile,
    Ref,
    Status,
)

WaitSeconds = Annotated[float, msgspec.Meta(ge=0, le=60, description="long-poll for up to N s")]
LeaseSeconds = Annotated[float, msgspec.Meta(ge=1, le=7 * 86400)]
ClaimLimit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
# A failure report is never refused for a long message (the failure would be lost): it is
# accepted up to 100,000 characters and stored as its first 4,000 (JobRepository.fail).
ErrorMessage = Annotated[
    str,
    msgspec.Meta(max_length=100_000, description="stored as its first 4,000 characters"),
]
FilterList = Annotated[list[str], msgspec.Meta(min_length=1, max_length=1000)]
IdList = Annotated[list[UUID], msgspec.Meta(min_length=1, max_length=100_000)]
StatusList = Annotated[list[Status], msgspec.Meta(min_length=1, max_length=5)]


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are refused."""


# --- submission ---------------------------------------------------------------------------


class CreateJob(NewJob, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/v1/jobs``: one job. A repeated ``idempotency_key`` (per owner_service) with
    the same body returns the existing job (200); with a different body it is a 409."""


class JobFields(_Body):
    """Fields of a batch item or of the batch ``defaults``; an item's fields override the
    defaults field by field (``input`` is replaced, not merged). After merging, owner_service,
    task_type and model_profile are required."""

    owner_service: Name | None = None
    task_type: Name | None = None
    model_profile: Profile | None = None
    owner_ref: Ref | None = None
    input: dict[str, Any] | None = None
    priority: Priority | None = None
    max_attempts: Attempts | None = None
    run_after: Instant | None = None
    idempotency_key: IdemKey | None = None


class CreateBatch(_Body):
    """``POST /api/v1/jobs/batch``: up to MAX_BATCH_SIZE jobs in one transaction."""

    jobs: Annotated[list[JobFields], msgspec.Meta(min_length=1)]
    defaults: JobFields = msgspec.field(default_factory=JobFields)


class BatchItem(msgspec.Struct, kw_only=True):
    id: UUID
    created: bool


class BatchResult(msgspec.Struct, kw_only=True):
    """One entry per submitted job, in order; ``created`` is false for idempotent repeats."""

    items: list[BatchItem]
    created: int
    existing: int


# --- selection ----------------------------------------------------------------------------


class FilterBody(_Body):
    """Selects jobs for retry/cancel by filter. All given fields must match (AND); a list
    matches any of its values, and a single value is read as a list of one (as ``claim`` and
    the query of ``GET /jobs`` take one; an empty list is still refused). An empty filter is
    refused unless ``all`` is true."""

    ids: UUID | IdList | None = None
    status: Status | StatusList | None = None
    owner_service: Name | None = None
    owner_ref: Ref | None = None
    task_type: str | FilterList | None = None
    model_profile: str | FilterList | None = None
    error_category: str | FilterList | None = None
    created_after: Instant | None = None
    created_before: Instant | None = None
    all: bool = False

    def to_filter(self) -> JobFilter:
        values = {f: getattr(self, f) for f in JobFilter.__struct_fields__}
        for f in _LIST_FILTERS:
            if values[f] is not None and not isinstance(values[f], list):
                values[f] = [values[f]]
        return JobFilter(**values)


_LIST_FILTERS = ("ids", "status", "task_type", "model_profile", "error_category")


class CountIds(msgspec.Struct, kw_only=True):
    """How many jobs an action changed, and which."""

    count: int
    ids: list[UUID]


class JobPage(msgspec.Struct, kw_only=True):
    """One page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page
    (null on the last page)."""

    items: list[Job]
    next_cursor: str | None


# --- worker side --------------------------------------------------------------------------


class ClaimRequest(_Body):
    """``POST /api/v1/jobs/claim``: lease up to ``limit`` due jobs of one or more profiles.
    With ``wait_seconds`` > 0 and nothing due, the request waits (woken by NOTIFY) until a
    job arrives or the time is up, then returns what it could claim (maybe nothing)."""

    worker_id: Name
    model_profile: Profile | Annotated[list[Profile], msgspec.Meta(min_length=1, max_length=50)]
    task_type: Name | Annotated[list[Name], msgspec.Meta(min_length=1, max_length=50)] | None = None
    limit: ClaimLimit = 1
    lease_seconds: LeaseSeconds | None = None
    wait_seconds: WaitSeconds = 0

    def profiles(self) -> list[str]:
        if isinstance(self.model_profile, str):
            return [self.model_profile]
        return list(dict.fromkeys(self.model_profile))

    def task_types(self) -> list[str] | None:
        """Only these task types (an external worker's), or any when not given."""
        if self.task_type is None or isinstance(self.task_type, str):
            return None if self.task_type is None else [self.task_type]
        return list(dict.fromkeys(self.task_type))


class ClaimResult(msgspec.Struct, kw_only=True):
    jobs: list[Job]


class _RunCall(_Body):
    """A call about the run of a job this worker claimed. ``started_at`` (the claimed job's,
    sent back as received) names that run: without it a worker is told apart by
    ``worker_id`` alone, and a late call of an earlier run of the same job by the same
    ``worker_id`` (the job retried, or reaped and claimed again) would act on the newer run.
    With it, such a call is a 409."""

    worker_id: Name
    started_at: Instant | None = None


class HeartbeatRequest(_RunCall):
    """Extend the lease of a running job this worker holds: by ``lease_seconds``, or by as
    long as the claim (or the last heartbeat) granted."""

    lease_seconds: LeaseSeconds | None = None


class CompleteRequest(_RunCall):
    result: Any = None


class FailRequest(_RunCall, kw_only=True):
    """A retryable failure with attempts left returns the job to pending after a backoff
    (at least ``retry_after_seconds`` when given); anything else fails it for good."""

    error_category: Name
    error_message: ErrorMessage = ""
    retryable: bool = False
    retry_after_seconds: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] | None = None


# --- errors -------------------------------------------------------------------------------


class FieldError(msgspec.Struct, kw_only=True):
    field: str
    message: str


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every 4xx/5xx body. ``error`` is a stable code to branch on; ``detail`` is for people."""

    error: str
    detail: str
    fields: list[FieldError] | None = None
    status: Status | None = None
    job_id: UUID | None = None


# --- stats --------------------------------------------------------------------------------


class CountRow(msgspec.Struct, kw_only=True):
    status: Status
    model_profile: str
    task_type: str
    count: int


class ErrorRow(msgspec.Struct, kw_only=True):
    error_category: str
    last_hour: int
    total: int


class PendingRow(msgspec.Struct, kw_only=True):
    model_profile: str
    pending: int
    due: int
    oldest_pending_age_seconds: float | None


class Throughput(msgspec.Struct, kw_only=True):
    completed_last_5m: int
    completed_last_60m: int
    per_minute_5m: float
    per_minute_60m: float


class Percentiles(msgspec.Struct, kw_only=True):
    p50: float | None
    p95: float | None


class Durations(msgspec.Struct, kw_only=True):
    """Over jobs finished (completed or failed) in the last hour."""

    jobs: int
    queue_wait_seconds: Percentiles
    run_seconds: Percentiles


class Stats(msgspec.Struct, kw_only=True):
    generated_at: datetime
    totals: dict[str, int]
    counts: list[CountRow]
    errors: list[ErrorRow]
    pending: list[PendingRow]
    throughput: Throughput
    durations: Durations
