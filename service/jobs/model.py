"""Job records and the shapes callers send, as msgspec Structs.

Why msgspec: one declaration validates API bodies (unknown fields refused, constraints named
in the error), serialises responses and converts database rows, at C speed on the hot path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

Status = Literal["pending", "running", "completed", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = ("pending", "running", "completed", "failed", "cancelled")

# ``$(?!\n)``: Python's ``$`` also matches before a final newline ("sec\n" passed); the
# lookahead pins the very end in Python and in the ECMA regexes the OpenAPI schema is read by.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$(?!\n)")]
# A profile names a NOTIFY channel ("ai_jobs:<profile>", at most 63 bytes): ASCII, <= 55 chars.
Profile = Annotated[
    str,
    msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,54}$(?!\n)", examples=["qwen2.5-14b"]),
]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
Priority = Annotated[int, msgspec.Meta(ge=-1000, le=1000)]
Attempts = Annotated[int, msgspec.Meta(ge=1, le=100)]
IdemKey = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
# An instant as RFC 3339 requires it, with an offset ("Z", "+03:00"): a time without one would
# be read in whatever zone the database session has, and a batch mixing both could not be sent.
Instant = Annotated[
    datetime,
    msgspec.Meta(
        tz=True,
        description="RFC 3339 date-time with an offset (Z or ±hh:mm)",
        examples=["2026-12-01T10:00:00Z"],
    ),
]


class Job(msgspec.Struct, kw_only=True):
    """A job as stored: technical state plus the caller's input and the worker's result."""

    id: UUID
    owner_service: str
    owner_ref: str | None
    task_type: str
    model_profile: str
    status: Status
    priority: int
    attempts: int
    max_attempts: int
    input: dict[str, Any]
    result: Any
    error_category: str | None
    error_message: str | None
    worker_id: str | None
    lease_expires_at: datetime | None
    run_after: datetime
    idempotency_key: str | None
    trace_context: dict[str, str] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def due_at(self) -> datetime:
        """When the job became runnable: its ``run_after``, but never before it was created. A
        caller may send a ``run_after`` in the past (a skewed clock, "now" computed early, or
        1970); measured from that, queue waits and pickup latency would include the gap."""
        return max(self.run_after, self.created_at)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """A stored row as callers see it. A row no reader could load (the database refuses
        one since migration 0004, but a restore or a replica applying rows skips triggers)
        is shown as 0004 repairs one, rather than failing every read and listing it is in:
        a non-object input under ``{"value": ...}``, an unreadable ``trace_context`` as none."""
        try:
            return cls.stored(row)
        except msgspec.ValidationError:
            return cls.stored(_as_repaired(row))

    @classmethod
    def stored(cls, row: dict[str, Any]) -> Job:
        """The row exactly as stored, else ``msgspec.ValidationError``: what the worker runs
        (a job must never run on anything but what was submitted)."""
        return msgspec.convert(row, cls, from_attributes=False)


def _as_repaired(row: dict[str, Any]) -> dict[str, Any]:
    fixed = dict(row)
    if not isinstance(fixed.get("input"), dict):
        fixed["input"] = {"value": fixed.get("input")}  # msgspec.Raw when nested too deep
    carrier = fixed.get("trace_context")
    if carrier is not None and not (
        isinstance(carrier, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in carrier.items())
    ):
        fixed["trace_context"] = None
    return fixed


class NewJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a caller submits. ``max_attempts`` defaults to ``JOB_MAX_ATTEMPTS``."""

    owner_service: Name
    task_type: Name
    model_profile: Profile
    owner_ref: Ref | None = None
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    priority: Priority = 0
    max_attempts: Attempts | None = None
    run_after: Instant | None = None
    idempotency_key: IdemKey | None = None


# For job inputs and results. Far deeper than any chat, transcription or JSON-schema input;
# far shallower than the ~950 levels where the JSON encoder and decoders (API, psycopg, worker)
# hit the recursion limit, which depends on each one's stack: a value one of them accepts,
# another must not refuse.
MAX_JSON_DEPTH = 64


# The times a row may hold (migration 0004 refuses others): a day inside what a ``datetime``
# holds, because the database renders a time in its session's TimeZone, where
# 9999-12-31T23:00:00Z is already year 10000 east of UTC and 0001-01-01T05:00:00Z is 1 BC
# west of it.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)


def submission_problem(new: NewJob) -> tuple[str, str] | None:
    """The first thing wrong with ``new`` that its declaration cannot say, as (field, message).

    Neither may be stored: a ``run_after`` outside ``EARLIEST``..``LATEST`` cannot be loaded
    back into a ``datetime`` under every server TimeZone (the database refuses it since
    migration 0004), and an input nested too deep cannot be decoded again; either would break
    the claim batch and every listing the job appears in.
    """
    if new.run_after is not None:
        try:
            in_range = EARLIEST <= new.run_after.astimezone(UTC) <= LATEST
        except OverflowError:
            in_range = False
        if not in_range:
            return "run_after", "must be between 0001-01-02T00:00:00Z and 9999-12-30T23:59:59Z"
    if too_deep(new.input):
        return "input", f"nested deeper than {MAX_JSON_DEPTH} levels"
    return None


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether objects/arrays in ``value`` nest more than ``limit`` levels (iterative)."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if type(node) is dict else node
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


class JobFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Selects jobs for list, retry-by-filter and cancel-by-filter. Empty selects everything."""

    ids: list[UUID] | None = None
    status: list[Status] | None = None
    owner_service: str | None = None
    owner_ref: str | None = None
    task_type: list[str] | None = None
    model_profile: list[str] | None = None
    error_category: list[str] | None = None
    created_after: Instant | None = None
    created_before: Instant | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__struct_fields__)

    def params(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__struct_fields__}
