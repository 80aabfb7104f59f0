"""``GET /api/v1/stats``: queue and error counters for dashboards and alerts.

The figures come from ``StatsRepository`` (four indexed queries run concurrently); this module
only shapes them. ``bench/stats_scale.py`` keeps the endpoint under 200 ms on 1,000,000 jobs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import get
from litestar.di import NamedDependency

from service.api.errors import responses
from service.api.schemas import (
    CountRow,
    Durations,
    ErrorRow,
    PendingRow,
    Percentiles,
    Stats,
    Throughput,
)
from service.jobs import STATUSES
from service.jobs.stats import StatsRepository


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


@get(
    "/stats",
    summary="Queue and error counters",
    description="Jobs by status x model_profile x task_type; errors by category (last hour and "
    "total, counting jobs whose latest attempt failed); pending and oldest due age per profile; "
    "completions per minute over 5 and 60 minutes; queue wait and run time p50/p95 of jobs "
    "finished in the last hour.",
    responses=responses(),
    tags=["stats"],
)
async def get_stats(stats: NamedDependency[StatsRepository]) -> Stats:
    snap = await stats.snapshot()
    counts = [CountRow(**r) for r in snap["stats_by_kind"]]
    totals: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for c in counts:
        totals[c.status] += c.count
    recent = StatsRepository.first(snap["stats_recent"])
    done5, done60 = int(recent.get("completed_5m") or 0), int(recent.get("completed_60m") or 0)
    return Stats(
        generated_at=datetime.now(UTC),
        totals=totals,
        counts=counts,
        errors=[ErrorRow(**r) for r in snap["stats_errors"]],
        pending=[
            PendingRow(
                model_profile=r["model_profile"],
                pending=r["pending"],
                due=r["due"],
                oldest_pending_age_seconds=_float(r["oldest_pending_age_seconds"]),
            )
            for r in snap["stats_pending"]
        ],
        throughput=Throughput(
            completed_last_5m=done5,
            completed_last_60m=done60,
            per_minute_5m=round(done5 / 5, 3),
            per_minute_60m=round(done60 / 60, 3),
        ),
        durations=Durations(
            jobs=int(recent.get("jobs") or 0),
            queue_wait_seconds=Percentiles(
                p50=_float(recent.get("wait_p50")), p95=_float(recent.get("wait_p95"))
            ),
            run_seconds=Percentiles(
                p50=_float(recent.get("run_p50")), p95=_float(recent.get("run_p95"))
            ),
        ),
    )


ROUTES = [get_stats]
