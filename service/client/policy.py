"""When the clients ask again: retries of requests that are safe to repeat, and ``wait``'s
long-poll loop. Both are pure bookkeeping (no I/O), shared by the sync and async clients.

What is worth asking again: an answer that says "later" (429, 502, 503, 504: a database blip,
a rollout, a proxy without a ready upstream), a connection lost or timed out. Not: a
misconfiguration (a URL without a scheme, a proxy refusing us) — retrying that only delays the
error — nor any other answer.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import httpx

from service.api.schemas import JobPage
from service.client.calls import LONG_POLL_CHUNK, Call, Calls
from service.client.errors import ApiError
from service.jobs.model import Job

TERMINAL = frozenset({"completed", "failed", "cancelled"})
LATER = frozenset({429, 502, 503, 504})
LOST = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Never reached the server: safe to send again whatever the request.
UNSENT = (httpx.ConnectError, httpx.ConnectTimeout)
log = logging.getLogger("ai_service.client")
RETRY_WITHOUT_DEADLINE = 300.0  # how long ``wait()`` without a timeout rides out errors
LONGEST_HINT = 10.0  # a Retry-After longer than this is the caller's to decide on


def transient(exc: Exception) -> bool:
    if isinstance(exc, ApiError):
        return exc.status_code in LATER
    return isinstance(exc, LOST)


class Retries:
    """The retries of one request: ``attempts`` more at most, after short, jittered pauses
    (or the server's ``Retry-After``, up to 10 s)."""

    def __init__(self, attempts: int, repeatable: bool, what: str = "request") -> None:
        self.left = attempts
        self.repeatable = repeatable
        self.done = 0
        self.what = what  # "POST /api/v1/jobs": for the log line (no query, no body)

    def pause(self, exc: Exception) -> float | None:
        """Seconds to wait before sending again, or None: raise ``exc``."""
        if self.left <= 0:
            return None
        if not (isinstance(exc, UNSENT) or (self.repeatable and transient(exc))):
            return None
        hint = exc.retry_after if isinstance(exc, ApiError) else None
        if hint is not None and hint > LONGEST_HINT:
            return None
        self.left -= 1
        self.done += 1
        pause = hint
        if pause is None:
            pause = min(2.0, 0.25 * 2.0 ** (self.done - 1)) * random.uniform(0.5, 1.0)
        why = f"HTTP {exc.status_code}" if isinstance(exc, ApiError) else type(exc).__name__
        log.info("%s: %s, sending it again in %.2f s (%d more at most)", self.what, why,
                 pause, self.left)  # fmt: skip
        return pause


class WaitLoop:
    """``wait``'s long-poll loop: what to ask for, when to return, and how long to pause —
    after a poll answered early with an unfinished job (a server closing its long-polls as it
    shuts down: without a pause the loop would spin), or after an error worth riding out
    while time is left."""

    def __init__(self, timeout: float | None, now: float) -> None:
        self.deadline = None if timeout is None else now + timeout
        self.failing_since: float | None = None
        self.failures = 0
        self.last = False  # the poll under way covers the rest of the time

    def ask(self, now: float) -> float:
        left = LONG_POLL_CHUNK if self.deadline is None else self.deadline - now
        self.last = self.deadline is not None and left <= LONG_POLL_CHUNK
        return max(0.0, min(LONG_POLL_CHUNK, left))

    def answered(self, job: Job, asked: float, took: float, now: float) -> float | None:
        """None: return ``job``; else how long to pause before the next poll."""
        self.failing_since, self.failures = None, 0
        early = asked - took > 1.0
        if job.status in TERMINAL or (self.last and not early):
            return None  # finished, or the poll that covered the rest of the time ran out
        left = LONG_POLL_CHUNK if self.deadline is None else self.deadline - now
        if left <= 0:
            return None
        return min(1.0, left) if early else 0.0

    def failed(self, exc: Exception, now: float) -> float | None:
        """Seconds to pause before asking again, or None: raise ``exc``."""
        if self.failing_since is None:
            self.failing_since = now
        limit = self.deadline
        if limit is None:
            limit = self.failing_since + RETRY_WITHOUT_DEADLINE
        if not transient(exc) or now >= limit:
            return None
        self.failures += 1
        hint = exc.retry_after if isinstance(exc, ApiError) else None
        # jittered, as Retries' pauses: the waits of many callers that an API rollout
        # interrupted together must not come back together
        backoff = min(5.0, 0.25 * 2**self.failures) * random.uniform(0.5, 1.0)
        return min(hint or backoff, limit - now)


class Pager:
    """``list``'s paging: the next page to ask for (no more jobs than ``limit`` wants), and the
    jobs of each page to hand out."""

    def __init__(self, page_size: int, limit: int | None, flt: dict[str, Any]) -> None:
        self.page_size, self.limit, self.flt = page_size, limit, flt
        self.cursor: str | None = None
        self.seen = 0
        self.size = page_size
        self.done = limit is not None and limit <= 0

    def next_call(self) -> Call[JobPage] | None:
        """The request of the next page, or None: every wanted job was handed out."""
        if self.done:
            return None
        size = self.page_size if self.limit is None else min(self.page_size, self.limit - self.seen)
        self.size = size
        return Calls.page(size, self.cursor, self.flt)

    def take(self, page: JobPage) -> list[Job]:
        jobs = page.items[: self.size]
        self.seen += len(jobs)
        self.cursor = page.next_cursor
        self.done = self.cursor is None or (self.limit is not None and self.seen >= self.limit)
        return jobs
