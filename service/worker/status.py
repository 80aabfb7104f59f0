"""What ``/worker/status`` reports: identity, per-profile counters, listener state.

Plain counters updated by the loops that own them (single event loop, no locks needed), read
by the HTTP endpoint and by tests waiting on a condition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.worker.breaker import ProviderBreaker


def service_version() -> str:
    try:
        return version("ai-service")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass
class ProfileStats:
    capacity: int
    # The claim loop's: starting; claiming; full (no free capacity); waiting (capacity free,
    # nothing due, jobs running); idle (nothing due, nothing running); backoff (claims
    # failing); paused, checking, probing (the inference server is down or recovering);
    # stopped.
    state: str = "starting"
    in_flight: int = 0
    claimed: int = 0
    completed: int = 0
    failed: int = 0  # final failures
    retried: int = 0  # failures sent back to pending with backoff
    released: int = 0  # handed back at shutdown, attempt not counted
    discarded: int = 0  # lease lost or job cancelled: the late result was dropped
    breaker: ProviderBreaker | None = None  # the profile's inference server, as seen here

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "breaker"}
        out["provider"] = self.breaker.as_dict() if self.breaker else {"state": "closed"}
        return out


@dataclass
class ListenerStatus:
    state: str = "disconnected"  # connected | disconnected | disabled
    channels: list[str] = field(default_factory=list)
    connected_at: float | None = None
    last_notification_at: float | None = None
    notifications: int = 0
    reconnects: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "channels": self.channels,
            "connected_at": _iso(self.connected_at),
            "last_notification_at": _iso(self.last_notification_at),
            "notifications": self.notifications,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }


@dataclass
class WorkerStatus:
    worker_id: str
    profiles: dict[str, ProfileStats]
    listener: ListenerStatus = field(default_factory=ListenerStatus)
    state: str = "starting"  # starting | running | draining | stopped
    pending_completions: int = 0
    started_at: float = field(default_factory=time.time)
    _started_mono: float = field(default_factory=time.monotonic)

    def snapshot(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "version": service_version(),
            "state": self.state,
            "started_at": _iso(self.started_at),
            "uptime_seconds": round(time.monotonic() - self._started_mono, 3),
            "listener": self.listener.as_dict(),
            "pending_completions": self.pending_completions,
            "profiles": {p: s.as_dict() for p, s in self.profiles.items()},
        }
