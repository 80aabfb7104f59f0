"""The provider breaker's decisions, on a clock the test moves (no waiting)."""

from __future__ import annotations

import pytest

from service.handlers.base import (
    CheckUnsupported,
    InvalidInput,
    JobTimeout,
    ProviderRejected,
    ProviderUnavailable,
)
from service.worker.breaker import (
    FIRST_PAUSE,
    MAX_CHECK_PAUSE,
    MAX_PAUSE,
    THRESHOLD,
    ProviderBreaker,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


DOWN = ProviderUnavailable("llm is unreachable", provider_wide=True)


def test_without_a_health_check_it_probes_with_one_job() -> None:
    clock, closed = Clock(), []
    b = ProviderBreaker("p", on_close=lambda: closed.append(True), clock=clock)
    for _ in range(THRESHOLD - 1):
        b.outcome(DOWN)
    assert b.state == "closed" and b.claim_limit(8, 0) == 8 and not b.paused
    b.outcome(DOWN)
    assert b.state == "open" and b.pause_left() == FIRST_PAUSE and b.claim_limit(8, 0) == 0
    b.outcome(DOWN)  # claimed before the pause, failing now: the pause stands
    assert b.pause_left() == FIRST_PAUSE and b.paused
    clock.now += FIRST_PAUSE
    assert b.state == "probing" and not b.needs_check()
    assert b.claim_limit(8, 1) == 0  # something still in flight: no probe yet
    assert b.claim_limit(8, 0) == 1
    b.outcome(DOWN)  # the probe failed: twice as long
    assert b.pause_left() == 2 * FIRST_PAUSE
    clock.now += 2 * FIRST_PAUSE
    b.outcome(JobTimeout("slow"))  # a probe that decides nothing: the same pause again
    assert b.pause_left() == 2 * FIRST_PAUSE and b.claim_limit(8, 0) == 0
    clock.now += 2 * FIRST_PAUSE
    b.outcome(None)
    assert b.state == "closed" and b.claim_limit(8, 0) == 8 and closed == [True]


@pytest.mark.anyio
async def test_with_a_health_check_no_job_is_spent_while_the_server_is_down() -> None:
    clock, closed, up = Clock(), [], [False]

    async def check() -> None:
        if not up[0]:
            raise ProviderUnavailable("llm is unreachable")

    b = ProviderBreaker("p", health_check=check, on_close=lambda: closed.append(True), clock=clock)
    up[0] = True
    await b.check()  # at start-up it served; then it went down
    up[0] = False
    assert b.state == "closed" and closed == [True]
    closed.clear()
    for _ in range(THRESHOLD):
        b.outcome(DOWN)
    clock.now += FIRST_PAUSE
    assert b.state == "checking" and b.claim_limit(8, 0) == 0  # asked first, no job probe
    await b.check()  # still down: a longer pause
    assert b.state == "open" and b.pause_left() == 2 * FIRST_PAUSE
    for _ in range(2000):  # hours of a server down: checks stay every 10 s, nothing overflows
        clock.now += b.pause_left()
        await b.check()
    assert b.pause_left() == MAX_CHECK_PAUSE
    clock.now += MAX_CHECK_PAUSE
    up[0] = True
    await b.check()  # it serves the model: one job probes it (a GET may pass where POSTs fail)
    assert b.state == "probing" and b.claim_limit(8, 0) == 1 and b.paused and closed == [True]
    b.outcome(DOWN)  # served its model list, but the job still failed: paused again
    assert b.state == "open" and b.pause_left() == MAX_CHECK_PAUSE
    clock.now += MAX_CHECK_PAUSE
    await b.check()
    b.outcome(None)
    assert b.state == "closed" and b.trips == 0 and not b.paused and b.claim_limit(8, 0) == 8


@pytest.mark.anyio
async def test_at_start_up_the_server_is_asked_before_the_first_claim() -> None:
    clock, closed = Clock(), []
    answers = ["llm answered HTTP 401: invalid API key", None]

    async def check() -> None:
        if problem := answers.pop(0):  # as error_for_status makes it, for a job's call
            bare = "llm answered HTTP 401 (its message is on the job)"
            raise ProviderRejected(problem, provider_wide=True, loggable=bare)

    b = ProviderBreaker("p", health_check=check, on_close=lambda: closed.append(True), clock=clock)
    assert b.state == "checking" and b.needs_check() and b.claim_limit(8, 0) == 0
    assert not b.paused  # held back, but not for a failure yet
    await b.check()  # a wrong key: one answer is enough (nothing was claimed to fail)
    assert b.state == "open" and b.pause_left() == FIRST_PAUSE and b.paused
    assert b.claim_limit(8, 0) == 0 and closed == []
    # no job was sent: the server's whole answer is the reason, not a pointer to a job
    assert b.last_error == "provider_rejected: llm answered HTTP 401: invalid API key"
    clock.now += FIRST_PAUSE
    await b.check()  # the key was fixed: one job probes it, as after any outage
    assert b.state == "probing" and b.claim_limit(8, 0) == 1 and closed == [True]

    fine = ProviderBreaker("p", health_check=_serves, on_close=lambda: closed.append(True))
    await fine.check()
    assert fine.state == "closed" and fine.claim_limit(8, 0) == 8 and not fine.paused
    assert not fine.needs_check() and closed == [True, True]  # the claim loop is woken


async def _serves() -> None:
    return None


def test_pauses_double_up_to_a_cap_and_honour_retry_after_up_to_a_minute() -> None:
    clock = Clock()
    b = ProviderBreaker("p", clock=clock)
    pauses = []
    for _ in range(THRESHOLD + 8):
        b.outcome(DOWN)
        if b.pause_left():
            pauses.append(b.pause_left())
            clock.now += b.pause_left()
    assert pauses[:3] == [FIRST_PAUSE, 2 * FIRST_PAUSE, 4 * FIRST_PAUSE]
    assert max(pauses) == MAX_PAUSE
    b.outcome(None)
    busy = ProviderUnavailable("429", retry_after=45.0, provider_wide=True)
    for _ in range(THRESHOLD):
        b.outcome(busy)
    assert b.pause_left() == 45.0
    b.outcome(None)
    for _ in range(THRESHOLD):
        b.outcome(ProviderUnavailable("429", retry_after=3600.0, provider_wide=True))
    assert b.pause_left() == MAX_PAUSE


def test_only_failures_of_the_server_count_and_an_answer_closes_it() -> None:
    clock = Clock()
    b = ProviderBreaker("p", clock=clock)
    for other in (InvalidInput("bad"), JobTimeout("slow"), ProviderUnavailable("audio host")):
        for _ in range(THRESHOLD):
            b.outcome(other)
    assert b.state == "closed"
    for _ in range(THRESHOLD):
        b.outcome(ProviderRejected("HTTP 401", provider_wide=True))
    assert b.state == "open"
    clock.now += FIRST_PAUSE
    b.outcome(ProviderRejected("HTTP 400: bad request"))  # the server answered
    assert b.state == "closed"


@pytest.mark.anyio
async def test_a_server_that_cannot_be_asked_is_probed_with_jobs_instead() -> None:
    clock, closed = Clock(), []

    async def no_model_list() -> None:
        raise CheckUnsupported("llm: GET /v1/models answered HTTP 404")

    b = ProviderBreaker(
        "p", health_check=no_model_list, on_close=lambda: closed.append(True), clock=clock
    )
    await b.check()  # at start-up: claims as if there were no check
    assert b.state == "closed" and b.claim_limit(8, 0) == 8 and closed == [True]
    assert b.health_check is None and not b.needs_check()
    for _ in range(THRESHOLD):
        b.outcome(DOWN)
    clock.now += FIRST_PAUSE
    assert b.state == "probing" and b.claim_limit(8, 0) == 1  # a job asks, as without a check


@pytest.mark.anyio
async def test_a_model_list_gone_after_start_up_counts_as_a_failure() -> None:
    """A server that listed its models at start-up and answers 404 later is failing (a route
    gone, a wrong server behind the name): not a reason to stop asking."""
    clock, answers = Clock(), [None, "gone"]

    async def check() -> None:
        if answers.pop(0):
            raise CheckUnsupported("llm: GET /v1/models answered HTTP 404") from ProviderRejected(
                "llm answered HTTP 404", provider_wide=True, status=404
            )

    b = ProviderBreaker("p", health_check=check, clock=clock)
    await b.check()
    for _ in range(THRESHOLD):
        b.outcome(DOWN)
    clock.now += FIRST_PAUSE
    await b.check()
    assert b.state == "open" and b.health_check is check and "404" in str(b.last_error)
