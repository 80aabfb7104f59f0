"""At ``ai-service dev``'s start-up on its embedded database: the leases an earlier run of
this machine held when it died (kill -9, a crash, a power cut) end, so the reaper hands its
jobs on at once instead of after their whole lease (``sql/queries_dev.sql`` says which).
A synchronous connection of its own: it runs once, before the services and their pools.
"""

from __future__ import annotations

import logging

import psycopg

from service.db.queries import queries

log = logging.getLogger("ai_service.dev")


def end_leases_of_dead_runs(url: str, worker_id_base: str) -> int:
    """End the leases held under ``worker_id_base/...`` (this machine's earlier runs, dead:
    none of this run exists yet); returns how many."""
    with psycopg.connect(url, autocommit=True) as conn:
        params = {"worker_id_base": worker_id_base}
        ended = conn.execute(queries()["end_leases_of_dead_runs"], params).rowcount
    if ended:
        log.warning(
            "%d jobs were left running by an earlier run that did not stop cleanly; "
            "their leases end now and they run again",
            ended,
        )
    return ended
