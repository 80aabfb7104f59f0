"""A no-op handler for the throughput and memory benchmarks, loaded into real worker processes
with ``AI_SERVICE_EXTRA_HANDLERS=bench.noop:register`` (kept tiny: it imports nothing more)."""

from __future__ import annotations

from service.handlers.base import HandlerRegistry
from service.jobs import Job

PROFILE = "bench-noop"
TASK = "bench_noop"


async def _noop(job: Job) -> None:
    return None


def register(registry: HandlerRegistry) -> None:
    registry.register([TASK], PROFILE, _noop)
