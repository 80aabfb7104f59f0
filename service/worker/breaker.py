"""The provider breaker of one profile: stop claiming while the inference server is down.

Without it, a vLLM restart (minutes while the weights load) or a rotated API key fails the
whole queue: every job is claimed, fails, is retried after a short backoff and fails again
until its attempts are spent. A failure that says the server itself is down or refuses
everyone (connection refused, 429/502/503, 401/403, 404 for the model, a redirect: the
handler's error is ``provider_wide``) counts; ``THRESHOLD`` of them in a row open the breaker.

- open: the profile's claim loop claims nothing for a pause (2 s, doubling; at least the
  server's Retry-After, up to 60 s).
- checking: after the pause the server is asked whether it serves the model (the profile's
  health check, ``GET /v1/models`` with the key; no job is spent); not yet: a longer pause
  (at most 10 s: a GET costs nothing).
- at start-up, a profile with a health check asks it before its first claim: a wrong URL,
  key or model name, or a server still loading, opens the breaker at once instead of failing
  the first jobs (each spending an attempt) until ``THRESHOLD`` failures have.
- probing: one job at a time (profiles without a health check start here, pausing up to
  60 s between probes since each may cost a job an attempt). A job that succeeds closes the
  breaker and claiming resumes at full capacity; one that fails server-wide opens it again;
  one that decides nothing (a timeout, bad input) waits out the same pause again.

Jobs in flight when the server went down, and the few claimed before ``THRESHOLD`` failures
opened the breaker, spend their attempt and go back to pending (a failure of the server for
everyone is retried, even a 401: ``Executor._fail``); the rest of the queue keeps its attempts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from service.handlers.base import CheckUnsupported, HandlerError, HealthCheck, ProviderUnavailable

log = logging.getLogger("ai_service.worker.breaker")

THRESHOLD = 3  # provider-wide failures in a row that open the breaker
FIRST_PAUSE = 2.0
MAX_PAUSE = 60.0  # before a job probe (each may cost a job an attempt), and Retry-After's cap
MAX_CHECK_PAUSE = 10.0  # before a health check: a GET costs nothing, and the server is used
# again within 10 s of serving its model rather than up to a minute
_MAX_DOUBLINGS = 8  # 2 s * 2**8 is past both caps; 2**trips would overflow after ~1,000 trips


class ProviderBreaker:
    def __init__(
        self,
        profile: str,
        *,
        health_check: HealthCheck | None = None,
        on_close: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.health_check = health_check
        self.on_close = on_close  # told when claiming may resume at full capacity
        self.clock = clock
        self.failures = 0  # provider-wide failures since the last success
        self.trips = 0  # times opened since the last success
        self.opened_until = 0.0  # claiming waits until then
        self.pause = 0.0  # the current pause's length
        self.verified = False  # the health check passed since the last trip
        self.unchecked = health_check is not None  # not asked yet since start-up
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        if self.unchecked:
            return "checking"
        if not self.trips:
            return "closed"
        if self.pause_left():
            return "open"
        return "checking" if self.needs_check() else "probing"

    @property
    def paused(self) -> bool:
        """Claiming is held back (open, checking or probing one job at a time): what the
        ``ai_service.worker.paused`` metric reports."""
        return self.trips > 0

    def pause_left(self) -> float:
        """Seconds until claiming may resume (0: now)."""
        return max(0.0, self.opened_until - self.clock()) if self.trips else 0.0

    def needs_check(self) -> bool:
        """The pause is over and the server should be asked before any job is claimed."""
        if self.unchecked:
            return True
        return bool(self.trips) and self.health_check is not None and not self.verified

    def claim_limit(self, free: int, in_flight: int) -> int:
        """All free slots when closed; else nothing while open or checking, and one job (a
        probe) once nothing else of the profile is in flight."""
        if self.unchecked:
            return 0
        if not self.trips:
            return free
        if self.pause_left() or self.needs_check():
            return 0
        return min(free, 1) if in_flight == 0 else 0

    async def check(self) -> None:
        """Ask the server (the pause is over): serving, a job probes it; not, a longer pause.
        Cancelled (the worker stopping), it decides nothing."""
        assert self.health_check is not None
        try:
            await self.health_check()
        except CheckUnsupported as exc:
            if not self.unchecked:  # it listed its models before: now a failure, as any 404
                self.failed(_checked(exc.__cause__ or exc))  # type: ignore[arg-type]
                return
            # At start-up: a server that has the job API but no model list (a gateway): the
            # jobs tell, as before the check existed.
            log.warning("%s: cannot ask the inference server whether it serves the model (%s); "
                        "claiming without the check", self.profile, exc)  # fmt: skip
            self.health_check = None  # from now on as for a handler without a check
            self.unchecked = False
            self.on_close()
            return
        except Exception as exc:
            if self.unchecked:  # at start-up one failure is enough: nothing was claimed yet
                self.unchecked = False
                self.failures = THRESHOLD - 1
            self.failed(_checked(exc))
            return
        if self.unchecked:
            self.unchecked = False
            log.info("%s: the inference server serves the model; claiming", self.profile)
            self.on_close()
            return
        self.verified = True
        log.info("%s: the inference server serves the model; one job probes it", self.profile)
        self.on_close()

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
            else:
                self._undecided()
        else:
            self._undecided()

    def succeeded(self) -> None:
        was_open = self.trips > 0
        if was_open:
            log.info("%s: the inference server answers again; claiming resumes", self.profile)
        self.failures, self.trips, self.verified, self.last_error = 0, 0, False, None
        if was_open:
            self.on_close()

    def _undecided(self) -> None:
        """A probe that says nothing of the server: the next one waits the same pause (not
        at once: each costs a job an attempt)."""
        if self.trips and not self.pause_left():
            self.opened_until = self.clock() + self.pause

    def failed(self, exc: HandlerError) -> None:
        if not exc.provider_wide:
            return
        self.failures += 1
        self.last_error = f"{exc.category}: {exc.loggable}"
        if self.failures < THRESHOLD and not self.trips:
            return
        if self.trips and self.pause_left():
            return  # a job claimed before the pause, failing now: the pause stands
        cap = MAX_CHECK_PAUSE if self.health_check is not None else MAX_PAUSE
        pause = min(cap, FIRST_PAUSE * 2 ** min(self.trips, _MAX_DOUBLINGS))
        self.pause = max(pause, min(exc.retry_after or 0.0, MAX_PAUSE))
        self.trips += 1
        self.verified = False
        self.opened_until = self.clock() + self.pause
        log.warning(
            "%s: the inference server is failing (%s); claiming paused for %.0fs",
            self.profile,
            self.last_error,
            self.pause,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "paused_seconds_left": round(self.pause_left(), 3),
            "last_error": self.last_error,
        }


def _checked(exc: Exception) -> HandlerError:
    """A failed health check, shown whole (scrubbed of secrets as every provider message is):
    no job input went with it, so there is nothing to hide, and no job to point to (a job's
    failure logs only "its message is on the job": a refusal may quote the prompt)."""
    error = _as_provider_wide(exc)
    error.loggable = str(error) or error.loggable
    return error


def _as_provider_wide(exc: Exception) -> HandlerError:
    if isinstance(exc, HandlerError) and exc.provider_wide:
        return exc
    message = str(exc) or type(exc).__name__
    retry_after = exc.retry_after if isinstance(exc, HandlerError) else None
    loggable = exc.loggable if isinstance(exc, HandlerError) else message
    return ProviderUnavailable(
        message, retry_after=retry_after, loggable=loggable, provider_wide=True
    )
