"""Jobs: the model, the state machine and the repository that both the API and workers use."""

from service.jobs.errors import IdempotencyConflict, JobError, JobNotFound, StateConflict
from service.jobs.model import STATUSES, Job, JobFilter, NewJob, Status
from service.jobs.repository import JobRepository, new_id

__all__ = [
    "STATUSES",
    "IdempotencyConflict",
    "Job",
    "JobError",
    "JobFilter",
    "JobNotFound",
    "JobRepository",
    "NewJob",
    "StateConflict",
    "Status",
    "new_id",
]
