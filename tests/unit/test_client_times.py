"""The Python client refuses naive datetimes before sending (the API would answer 422)."""

from __future__ import annotations

import datetime as dt

import pytest

from service.client.calls import Calls, _filter

NAIVE = dt.datetime(2030, 1, 1, 12, 0)
AWARE = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=3)))


def test_naive_times_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="run_after must be timezone-aware"):
        Calls.create("o", "llm_chat", "p", {}, run_after=NAIVE)
    with pytest.raises(ValueError, match="created_before must be timezone-aware"):
        _filter(created_before=NAIVE)


def test_aware_times_keep_their_offset() -> None:
    call = Calls.create("o", "llm_chat", "p", {}, run_after=AWARE)
    assert call.body is not None and call.body["run_after"] == "2030-01-01T12:00:00+03:00"
    assert _filter(created_after=AWARE) == {"created_after": "2030-01-01T12:00:00+03:00"}
