"""Bounds on metric attribute values that come from callers.

``model_profile`` and ``task_type`` are whatever a caller submits (any well-formed name), as is
an external worker's ``error_category``, and
every distinct value is a series of its own, kept by the process for its whole life and by
Prometheus for its retention: a batch of 5,000 jobs with random profiles made 20,000 series
and a 3 MB ``/metrics``. So each process reports the first ``LIMIT`` values it meets of each,
as they are, and any later new value as ``other`` (with one warning saying so). Real
deployments have a handful of profiles and task types; 100 leaves room for many more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger("ai_service.metrics")

LIMIT = 100
OTHER = "other"


class BoundedValues:
    def __init__(self, attribute: str, limit: int = LIMIT) -> None:
        self.attribute = attribute
        self.limit = limit
        self.seen: set[str] = set()
        self._counted = 0  # values taken from callers, against the limit
        self._warned = False

    def allow(self, values: Iterable[str]) -> None:
        """Values this process serves or is configured with: reported as they are, always,
        and outside the limit (a profile served here must never read as ``other``, however
        many callers' names came first)."""
        self.seen.update(values)

    def reset(self) -> None:
        self.seen.clear()
        self._counted = 0
        self._warned = False

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if self._counted < self.limit:
            self._counted += 1
            self.seen.add(value)
            return value
        if not self._warned:
            self._warned = True
            log.warning(
                "metrics: more than %d distinct %s values; further new ones are reported as "
                "%r (the jobs themselves are unaffected)",
                self.limit,
                self.attribute,
                OTHER,
            )
        return OTHER


profiles = BoundedValues("model_profile")
task_types = BoundedValues("task_type")
error_categories = BoundedValues("error_category")
