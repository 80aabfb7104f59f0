"""The queue gauges' source: one grouped query every ``INTERVAL`` seconds, in the API process.

Why sampled and not queried per scrape: scrapes come from several Prometheus replicas and the
Collector at their own pace, and the jobs table may hold millions of rows. ``stats_pending``
(the same query as ``GET /api/v1/stats``) reads only the partial claim index
(``WHERE status = 'pending'``), so its cost follows the queue, not the history. The API runs
it (every replica does; dashboards take ``max`` by profile); it runs only when metrics are
exported at all.
"""

from __future__ import annotations

import logging

import anyio

from service import metrics
from service.db import Database, DatabaseUnavailable

log = logging.getLogger("ai_service.metrics.queue")

INTERVAL = 10.0


async def sample_queue(db: Database, *, interval: float = INTERVAL) -> None:
    """Refresh ``service.metrics.queue_sample`` forever (cancel to stop); never raises."""
    while True:
        try:
            metrics.queue_sample.update(await db.fetch("stats_pending"))
        except DatabaseUnavailable as exc:
            log.debug("queue sample skipped: %s", exc)
        except Exception:
            log.exception("queue sample failed")
        await anyio.sleep(interval)
