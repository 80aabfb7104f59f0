"""Dependencies the route handlers receive by name (``repo``, ``stats``, ``hub``, ``reaper``,
``settings``).

The objects are built once in the app's lifespan and kept on ``app.state``; these providers only
hand them out, so a handler's signature says exactly what it touches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide

from service.api.hub import NotifyHub
from service.config import Settings
from service.jobs import JobRepository
from service.jobs.reaper import Reaper
from service.jobs.stats import StatsRepository

T = TypeVar("T")


def _repo(state: State) -> JobRepository:
    repo: JobRepository = state.repo
    return repo


def _stats(state: State) -> StatsRepository:
    stats: StatsRepository = state.stats
    return stats


def _hub(state: State) -> NotifyHub:
    hub: NotifyHub = state.hub
    return hub


def _reaper(state: State) -> Reaper:
    reaper: Reaper = state.reaper
    return reaper


def _settings(state: State) -> Settings:
    settings: Settings = state.settings
    return settings


DEPENDENCIES = {
    "repo": Provide(_repo, sync_to_thread=False),
    "stats": Provide(_stats, sync_to_thread=False),
    "hub": Provide(_hub, sync_to_thread=False),
    "reaper": Provide(_reaper, sync_to_thread=False),
    "settings": Provide(_settings, sync_to_thread=False),
}


async def watch_disconnect(request: Request[Any, Any, Any], gone: anyio.Event) -> None:
    """Set ``gone`` when the client hangs up (a long-poll then stops waiting at once, and a
    claim never leases jobs to a caller that is no longer there to receive them)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def unless_gone(
    request: Request[Any, Any, Any], work: Callable[[anyio.Event], Awaitable[T]]
) -> T:
    """Run ``work(gone)`` while watching for the client to hang up; errors from ``work`` come
    out as themselves (not wrapped in an exception group), so they map to their status."""
    gone = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, request, gone)
            result = await work(gone)
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return result
