"""Metric attributes that come from callers are bounded, and drained caller profiles end."""

from __future__ import annotations

import logging

import pytest

from service.metrics import QueueSnapshot, names
from service.metrics.labels import OTHER, BoundedValues

PENDING = names.QUEUE_PENDING.name
OLDEST = names.QUEUE_OLDEST_AGE.name


def test_values_past_the_limit_are_reported_as_other_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bound = BoundedValues("model_profile", limit=3)
    assert [bound(v) for v in ("a", "b", "a", "c")] == ["a", "b", "a", "c"]
    with caplog.at_level(logging.WARNING, logger="ai_service.metrics"):
        assert [bound(v) for v in ("d", "e", "b")] == [OTHER, OTHER, "b"]
    assert caplog.text.count("more than 3 distinct model_profile values") == 1


def row(profile: str, pending: int, age: float = 1.0) -> dict[str, object]:
    return {"model_profile": profile, "pending": pending, "due": pending,
            "oldest_pending_age_seconds": age}  # fmt: skip


def test_a_drained_caller_profile_reads_0_for_a_while_then_its_series_ends() -> None:
    q = QueueSnapshot()
    q.expect(["served"])
    q.update([row("adhoc", 5)], now=1000.0)
    assert q.rows["adhoc"][PENDING] == 5 and q.rows["served"][PENDING] == 0
    q.update([], now=1000.0 + q.KEEP_DRAINED_S - 1)  # drained: 0, so graphs see it reach 0
    assert q.rows["adhoc"][PENDING] == 0
    q.update([], now=1000.0 + q.KEEP_DRAINED_S + 1)
    assert "adhoc" not in q.rows and "served" in q.rows  # an expected profile stays
    assert {o.attributes["model_profile"] for o in q.observe(names.QUEUE_PENDING)} == {"served"}


def test_profiles_past_the_bound_are_summed_into_other(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.metrics as metrics

    monkeypatch.setattr(metrics.labels, "profiles", BoundedValues("model_profile", limit=2))
    q = QueueSnapshot()
    q.update([row("a", 1), row("b", 2), row("c", 3, age=9.0), row("d", 4, age=4.0)], now=0.0)
    assert set(q.rows) == {"a", "b", OTHER}
    assert q.rows[OTHER][PENDING] == 7 and q.rows[OTHER][OLDEST] == 9.0


def test_a_served_profile_keeps_its_name_however_many_callers_came_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound is for callers' names: queue alerts on a served profile must not go quiet
    because 100 other names were queued before it (the database's order decides that)."""
    import service.metrics as metrics

    bound = BoundedValues("model_profile", limit=2)
    monkeypatch.setattr(metrics.labels, "profiles", bound)
    q = QueueSnapshot()
    q.update([row("x1", 1), row("x2", 1), row("x3", 1)], now=0.0)  # the bound is used up
    q.expect(["qwen2.5-14b"])
    q.update([row("x1", 1), row("x2", 1), row("x3", 1), row("qwen2.5-14b", 500)], now=1.0)
    assert q.rows["qwen2.5-14b"][PENDING] == 500 and q.rows[OTHER][PENDING] == 1
    bound.allow(["served-later"])  # allowed values never count against the limit
    assert bound("served-later") == "served-later" and bound("x4") == OTHER
