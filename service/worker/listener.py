"""The process's one LISTEN connection: wake-ups per profile and cancellations of running jobs.

Channels: ``ai_jobs:<profile>`` for each profile served (wakes that profile's claim loop) and
``ai_jobs_cancelled`` (payload: a job id, cancelled: stops it if it runs here; or a job id and
the started_at of a run, in µs, taken back to pending: stops that run only). After every connect and
reconnect all claim loops are told to claim once, because notifications sent while we were not
listening are gone (NOTIFY is a hint; this catch-up and the fallback poll are the safety net).
A connection that dies (server restart, ``pg_terminate_backend``, network cut: found by the
ping that ends every keepalive round) is reopened with jittered exponential backoff; in-flight
jobs carry on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from uuid import UUID

import anyio

from service import metrics
from service.backoff import Backoff
from service.db import DatabaseUnavailable
from service.db.listen import (
    KEEPALIVE,
    PING_TIMEOUT,
    ListenConnection,
    Notification,
    profile_channel,
)
from service.logs import FailureLog
from service.worker.status import ListenerStatus

log = logging.getLogger("ai_service.worker.listener")

CANCEL_CHANNEL = "ai_jobs_cancelled"


class Listener:
    def __init__(
        self,
        url: str,
        profiles: Sequence[str],
        *,
        status: ListenerStatus,
        on_wake: Callable[[str], None],
        on_cancel: Callable[[UUID, int | None], None],
        on_connect: Callable[[], None],
    ) -> None:
        self.url = url
        self._by_channel = {profile_channel(p): p for p in profiles}
        self.channels = [*self._by_channel, CANCEL_CHANNEL]
        self.status = status
        self.on_wake = on_wake
        self.on_cancel = on_cancel
        self.on_connect = on_connect
        status.channels = list(self.channels)

    async def run(self) -> None:
        backoff = Backoff(0.05, 5.0)
        failures = FailureLog(log)
        while True:
            try:
                conn = await ListenConnection.connect(self.url, self.channels)
            except DatabaseUnavailable as exc:
                self._down(failures, exc, "cannot connect")
                await anyio.sleep(backoff.next())
                continue
            except Exception as exc:  # not known to happen: it must not end the worker
                self._down(failures, exc, "cannot connect", unexpected=True)
                await anyio.sleep(backoff.next())
                continue
            since = time.monotonic()
            try:
                if self.status.connected_at is not None:
                    self.status.reconnects += 1
                    metrics.listener_reconnected()
                failures.recovered()
                self.status.state = "connected"
                self.status.connected_at = time.time()
                self.status.last_error = None
                log.info("listening on %s", ", ".join(self.channels))
                self.on_connect()
                await self._receive(conn)
            except (DatabaseUnavailable, TimeoutError) as exc:
                self._down(failures, exc, "connection lost")
            except Exception as exc:
                self._down(failures, exc, "failed", unexpected=True)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await conn.close()
            if time.monotonic() - since >= KEEPALIVE:  # it lasted: start the backoff over
                backoff.reset()
            await anyio.sleep(backoff.next())

    def _down(
        self, failures: FailureLog, exc: BaseException, what: str, *, unexpected: bool = False
    ) -> None:
        """The log has the driver's words, once per kind of failure; the status (an open
        port) says only what went wrong, as the readiness answers do: the driver's words name
        the host, port and user."""
        failures.failed(f"listener disconnected: {what}", exc, unexpected=unexpected)
        self.status.state = "disconnected"
        self.status.last_error = f"{what} ({type(exc).__name__}; the worker log says why)"

    async def _receive(self, conn: ListenConnection) -> None:
        while True:
            async for n in conn.notifications(timeout=KEEPALIVE):
                self._dispatch(n)
            with anyio.fail_after(PING_TIMEOUT):
                await conn.ping()

    def _dispatch(self, n: Notification) -> None:
        self.status.notifications += 1
        self.status.last_notification_at = time.time()
        profile = self._by_channel.get(n.channel)
        if profile is not None:
            self.on_wake(profile)
        elif n.channel == CANCEL_CHANNEL:
            head, _, run = n.payload.partition(" ")
            try:
                job_id, started_us = UUID(head), int(run) if run else None
            except ValueError:
                log.warning("ignoring a malformed cancel notification: %r", n.payload[:100])
                return
            self.on_cancel(job_id, started_us)
