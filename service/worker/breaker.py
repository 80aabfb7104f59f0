"""The provider breaker of one profile: stop claiming while the inference server is down.

Without it, a vLLM restart (minutes while the weights load) or a rotated API key fails the
whole queue: every job is claimed, fails, is retried after a short backoff and fails again
until its attempts are spent. A failure that says the server itself is down or refuses
everyone (connection refused or reset, 429 and 5xx, 401/403, 404 for the model: the
handler's error is ``provider_wide``) counts; ``THRESHOLD`` of them in a row open the breaker:
the profile's claim loop pauses (2 s, doubling to 60 s, at least the server's Retry-After),
then claims one job as a probe. A success closes it and claiming resumes at full capacity.

Jobs in flight when the server went down fail their attempt as usual (the categories are
the providers issue's); only the jobs still queued are spared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from service.handlers.base import HandlerError

log = logging.getLogger("ai_service.worker.breaker")

THRESHOLD = 3  # provider-wide failures in a row that open the breaker
FIRST_PAUSE = 2.0
MAX_PAUSE = 60.0


class ProviderBreaker:
    def __init__(self, profile: str, *, on_close: Callable[[], None] = lambda: None) -> None:
        self.profile = profile
        self.on_close = on_close
        self.failures = 0  # provider-wide failures since the last success
        self.trips = 0  # times opened since the last success
        self.opened_until = 0.0  # monotonic; claiming waits until then
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        if self.trips == 0:
            return "closed"
        return "open" if time.monotonic() < self.opened_until else "probing"

    def succeeded(self) -> None:
        if self.trips:
            log.info("%s: the inference server answers again; claiming resumes", self.profile)
        was_open, self.failures, self.trips, self.last_error = self.trips > 0, 0, 0, None
        if was_open:
            self.on_close()

    def failed(self, exc: HandlerError) -> None:
        if not exc.provider_wide:
            return
        self.failures += 1
        self.last_error = f"{exc.category}: {exc.loggable}"
        if self.failures < THRESHOLD and not self.trips:
            return
        if self.trips and time.monotonic() < self.opened_until:
            return  # a job claimed before the pause, failing now: the pause stands
        pause = min(MAX_PAUSE, FIRST_PAUSE * 2**self.trips)
        pause = max(pause, min(exc.retry_after or 0.0, MAX_PAUSE))
        self.trips += 1
        self.opened_until = time.monotonic() + pause
        log.warning(
            "%s: the inference server is failing (%s); claiming paused for %.0fs",
            self.profile,
            self.last_error,
            pause,
        )

    def pause_left(self) -> float:
        """Seconds until claiming may resume (0: now)."""
        return max(0.0, self.opened_until - time.monotonic()) if self.trips else 0.0

    def claim_limit(self, free: int, in_flight: int) -> int:
        """All free slots when closed; after a pause, one job (a probe) once nothing else of
        the profile is in flight, and nothing more until an outcome decides."""
        if not self.trips:
            return free
        return min(free, 1) if in_flight == 0 and not self.pause_left() else 0

    def outcome(self, error: BaseException | None) -> None:
        """A job of the profile ended: ``error`` None (the server answered), or what failed
        it. Errors that say nothing of the server (bad input, a timeout) decide nothing."""
        if error is None:
            self.succeeded()
        elif isinstance(error, HandlerError):
            if error.provider_wide:
                self.failed(error)
            elif error.category in ("provider_rejected", "invalid_output"):
                self.succeeded()  # the server answered (this request was wrong)

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "paused_seconds_left": round(self.pause_left(), 3),
            "last_error": self.last_error,
        }
