"""Read-only aggregate queries behind ``GET /api/v1/stats``.

Why a class of its own: the stats are the one read that scans history rather than the queue,
so its queries are tuned (and benchmarked on 1,000,000 rows) separately from the job
repository's per-job statements. The four queries are independent and run concurrently on
separate pooled connections, so the answer takes as long as the slowest one. Running them in a
task group must not change what callers see: a lost database still surfaces as the
``DatabaseUnavailable`` one query would raise (the API answers 503), not as a group (a 500).
"""

from __future__ import annotations

from typing import Any

import anyio

from service.db import Database, DatabaseUnavailable, Row


class StatsRepository:
    QUERIES = ("stats_by_kind", "stats_errors", "stats_pending", "stats_recent")

    def __init__(self, db: Database) -> None:
        self.db = db

    async def snapshot(self) -> dict[str, list[Row]]:
        """Every stats query's rows, by query name."""
        out: dict[str, list[Row]] = {}

        async def run(name: str) -> None:
            out[name] = await self.db.fetch(name)

        try:
            async with anyio.create_task_group() as tg:
                for name in self.QUERIES:
                    tg.start_soon(run, name)
        except ExceptionGroup as group:
            # Unwrapped only when every failure is the database's: anything else in the group
            # (a bug) stays a group, so it is answered and logged as the internal error it is.
            lost, other = group.split(DatabaseUnavailable)
            if lost is None or other is not None:
                raise
            first: DatabaseUnavailable | ExceptionGroup[DatabaseUnavailable] = lost
            while isinstance(first, ExceptionGroup):
                first = first.exceptions[0]
            raise first from first.__cause__  # the driver error, not the group
        return out

    @staticmethod
    def first(rows: list[Row]) -> dict[str, Any]:
        return rows[0] if rows else {}
