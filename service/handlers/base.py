"""The contract between the worker runtime and task handlers.

A handler is an async callable taking the claimed ``Job`` and returning its JSON result. It
signals failure by raising a ``HandlerError`` subclass, whose category and retryability the
worker records (``fail``); any other exception is recorded as ``internal`` and retried. The
worker, not the handler, owns leases, cancellation, timeouts of the whole job and storage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar

from service.jobs.model import Job

Handler = Callable[[Job], Awaitable[Any]]
# Whether a profile's inference server serves its model now; raises when it does not.
HealthCheck = Callable[[], Awaitable[None]]


class CheckUnsupported(Exception):
    """A health check that cannot be made against this server (an OpenAI-compatible gateway
    without ``GET /v1/models``): the breaker then works as for a handler without one."""


# Every error category a job can end with; docs and dashboards enumerate these.
CATEGORIES: tuple[str, ...] = (
    "timeout",
    "provider_unavailable",
    "provider_rejected",
    "invalid_input",
    "input_unavailable",
    "invalid_output",
    "internal",
    "unsupported_task",
    "lease_expired",
)


class HandlerError(Exception):
    """A failure with a category the operator can act on. Messages must not carry secrets."""

    category: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = True
    # Retried once only: final when the job's previous attempt failed with the same category.
    retry_once: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        loggable: str | None = None,
        provider_wide: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status  # the HTTP status that meant this failure, if one did
        # The inference server itself is down or refuses everyone (not this job's request):
        # the worker pauses claiming for the profile (``service.worker.breaker``).
        self.provider_wide = provider_wide
        # What a log line may show when ``message`` quotes a provider's answer, which may
        # quote the prompt (a 422's FastAPI detail echoes the rejected input): the job's
        # error_message keeps it for its owner, the logs do not (unless content capture is on).
        self.loggable = message if loggable is None else loggable


class JobTimeout(HandlerError):
    category = "timeout"
    retryable = True


class ProviderUnavailable(HandlerError):
    """429/502/503/504 or a connection error: the GPU server is busy or down; try later."""

    category = "provider_unavailable"
    retryable = True


class ProviderRejected(HandlerError):
    """Any other 4xx: the request itself is wrong; retrying cannot help. Except when it is
    ``provider_wide`` (401/403, 404 for the model, a redirect: every request is refused
    alike), which the worker retries: the job is fine, the deployment is not."""

    category = "provider_rejected"
    retryable = False


class InputUnavailable(HandlerError):
    """Input the job points to (``audio_url``) could not be fetched now: its host refused,
    did not answer in time, or answered 408/429/5xx. The caller's storage, not the inference
    server: a category of its own keeps the inference alerts (provider_unavailable, timeout)
    and the operator's eye on the right system. Retried with back-off."""

    category = "input_unavailable"
    retryable = True


class InvalidInput(HandlerError):
    """The job's input cannot be run. ``field`` is the path inside ``input`` at fault
    (``messages[0].role``), or None for the input as a whole; the API names it as
    ``input.<field>`` when it refuses the same input at submission."""

    category = "invalid_input"
    retryable = False

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidOutput(HandlerError):
    """The model answered, but not in the requested shape (e.g. JSON that does not parse).
    Retried once (sampling may well answer properly the second time), then final."""

    category = "invalid_output"
    retryable = True
    retry_once = True


class UnsupportedTask(HandlerError):
    category = "unsupported_task"
    retryable = False


class HandlerRegistry:
    """Maps ``(task_type, model_profile)`` to a handler."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Handler] = {}
        self._health: dict[str, HealthCheck] = {}

    def register(self, task_types: Iterable[str], model_profile: str, handler: Handler) -> None:
        for t in task_types:
            key = (t, model_profile)
            if key in self._routes:
                raise ValueError(f"a handler for task_type={t!r} on {model_profile!r} exists")
            self._routes[key] = handler

    def lookup(self, task_type: str, model_profile: str) -> Handler | None:
        return self._routes.get((task_type, model_profile))

    def profiles(self) -> list[str]:
        """The model profiles with at least one handler, in registration order."""
        return list(dict.fromkeys(p for _, p in self._routes))

    def task_types(self, model_profile: str) -> list[str]:
        return [t for t, p in self._routes if p == model_profile]

    def set_health_check(self, model_profile: str, check: HealthCheck) -> None:
        """How the worker asks, without spending a job, whether the profile's inference
        server is back after it failed (``service.worker.breaker``)."""
        self._health[model_profile] = check

    def health_check(self, model_profile: str) -> HealthCheck | None:
        return self._health.get(model_profile)
