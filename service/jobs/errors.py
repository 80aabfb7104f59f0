"""Domain errors of the job repository; the API maps each to one stable error code."""

from __future__ import annotations

from uuid import UUID


class JobError(Exception):
    code = "job_error"


class JobNotFound(JobError):
    code = "not_found"

    def __init__(self, job_id: UUID) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class StateConflict(JobError):
    """The job is not in a state that allows the action, or the caller does not hold it."""

    code = "state_conflict"

    def __init__(self, job_id: UUID, action: str, status: str, reason: str) -> None:
        super().__init__(f"cannot {action} job {job_id}: {reason} (status is {status})")
        self.job_id = job_id
        self.action = action
        self.status = status


class IdempotencyConflict(JobError):
    code = "idempotency_conflict"

    def __init__(self, key: str, existing: UUID) -> None:
        super().__init__(
            f"idempotency_key {key!r} was already used for job {existing} with a different body"
        )
        self.key = key
        self.existing = existing
