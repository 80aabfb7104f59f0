"""Jobs: the model, the state machine and the repository that both the API and workers use.

The repository (and through it psycopg, the pool, metrics and tracing) is imported on first
use, not with the package: the Python client needs only the model (``service.client`` reads
``Job``), and a domain service importing it should not load the server's database stack.
"""

from typing import TYPE_CHECKING

from service.jobs.errors import IdempotencyConflict, JobError, JobNotFound, StateConflict
from service.jobs.model import STATUSES, Job, JobFilter, NewJob, Status

if TYPE_CHECKING:
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


def __getattr__(name: str) -> object:
    if name in ("JobRepository", "new_id"):
        from service.jobs import repository

        return getattr(repository, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
