"""Log lines that an outage multiplies: error answers logged as warnings come at most one a
second per (status, code), the next line counting those left out (an outage makes every
request a 503, and one line per answer grew the log with the traffic); a readiness probe says
when readiness is lost and regained, not at every probe; a retry loop, each kind of failure
once until it works again; an exception without text is named by
its class, not left as "lost its connection: "."""

from __future__ import annotations

import logging

import pytest

from service.api import errors
from service.logs import FailureLog, ReadinessLog, reason


def test_one_line_a_second_per_status_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(errors.time, "monotonic", lambda: clock[0])
    throttle = errors._Throttle()
    outage = (503, "database_unavailable")
    assert throttle.admit(outage) == 0  # the first is logged
    assert [throttle.admit(outage) for _ in range(3)] == [None] * 3  # then left out ...
    assert throttle.admit((401, "unauthorized")) == 0  # ... per status and code
    clock[0] += 0.999
    assert throttle.admit(outage) is None
    clock[0] += 0.001
    assert throttle.admit(outage) == 4  # the next line counts the four left out
    clock[0] += 5
    assert throttle.admit(outage) == 0


def test_a_503_line_names_the_database_reason_and_what_was_left_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: two lines per answer ("database unavailable: ..." and "... answered 503")."""
    from litestar import Litestar, get
    from litestar.testing import TestClient

    from service.db import DatabaseUnavailable

    clock = [0.0]
    monkeypatch.setattr(errors.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(errors, "_throttle", errors._Throttle())

    @get("/down")
    async def down() -> None:
        raise DatabaseUnavailable("couldn't get a connection after 5.00 sec")

    app = Litestar(  # (Litestar's own logging config would replace pytest's handler)
        [down], exception_handlers={Exception: errors.handle_exception}, logging_config=None
    )
    caplog.set_level(logging.INFO, logger="ai_service.api")
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/down").status_code == 503
        clock[0] += 1.0
        assert client.get("/down").status_code == 503
    lines = [r.getMessage() for r in caplog.records if r.name == "ai_service.api"]
    assert lines == [
        "GET /down answered 503 database_unavailable: couldn't get a connection after 5.00 sec",
        "GET /down answered 503 database_unavailable: couldn't get a connection after 5.00 sec"
        " (and 2 more like it in the last seconds, not logged)",
    ]


def test_readiness_is_logged_as_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="t.ready")
    probe = ReadinessLog(logging.getLogger("t.ready"))
    probe.ready()
    for _ in range(3):
        probe.not_ready("PostgreSQL is not reachable: timeout")
    probe.ready()
    probe.ready()
    probe.not_ready("the worker is draining", expected=True)  # by design: no warning
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "not ready: PostgreSQL is not reachable: timeout"),
        ("INFO", "ready again"),
        ("INFO", "not ready: the worker is draining"),
    ]


def test_a_retry_loop_logs_each_kind_of_failure_once_until_it_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="t.retry")
    failures = FailureLog(logging.getLogger("t.retry"))
    assert not failures.recovered()
    for _ in range(3):
        failures.failed("cannot connect", OSError("connection refused"))
    failures.failed("cannot connect", TimeoutError())  # another kind
    for _ in range(2):
        failures.failed("cannot connect", RuntimeError("a bug"), unexpected=True)
    assert failures.recovered()
    failures.failed("cannot connect", OSError("connection refused"))  # after it worked: again
    assert [(r.levelname, r.getMessage(), bool(r.exc_info)) for r in caplog.records] == [
        ("WARNING", "cannot connect: connection refused", False),
        ("WARNING", "cannot connect: TimeoutError", False),
        ("ERROR", "cannot connect: a bug", True),
        ("WARNING", "cannot connect: connection refused", False),
    ]


def test_an_exception_without_text_is_named_by_its_class() -> None:
    assert reason(TimeoutError()) == "TimeoutError"
    assert reason(OSError("connection refused")) == "connection refused"


def test_a_console_line_cannot_be_split_by_what_a_caller_sent() -> None:
    """``GET /api/v1/x%0d%0aFORGED`` wrote a raw CR/LF into ``dev``'s console line."""
    from service.logs import ConsoleFormatter

    record = logging.LogRecord(
        "ai_service.api",
        logging.INFO,
        __file__,
        1,
        "GET %s answered 404",
        ("/x\r\nFORGED\x1b[2J",),
        None,
    )
    record.__dict__["error"] = "a\nb"
    line = ConsoleFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "/x\\r\\nFORGED\\x1b[2J answered 404" in line and "error=a\\nb" in line
