"""The long-poll hub: ONE LISTEN connection per API process, shared by every waiting request.

Who waits: ``GET /api/v1/jobs/{id}?wait_seconds=N`` (channel ``ai_jobs_finished``, payload =
the job id) and ``POST /api/v1/jobs/claim`` with ``wait_seconds`` (channel
``ai_jobs:<profile>``, any payload). A request registers a ``Waiter`` *before* it checks the
database, so a notification that lands between the check and the wait is not lost; after every
wake it re-checks the database, and once more when its time is up, so a notification missed
altogether (connection lost, server restarted) costs latency, never correctness.

Profile channels are LISTENed on demand. psycopg holds the connection's lock while it waits for
notifications, so the receive loop runs inside a cancel scope that a new subscription cancels;
the loop then issues the LISTEN and resumes. Channels nobody waited on for a while are
UNLISTENed, so arbitrary profile names cannot grow the set forever. On every (re)connect all
waiters are woken to re-check, because notifications sent while we were not listening are gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio

from service.backoff import Backoff
from service.db import DatabaseUnavailable
from service.db.listen import (
    KEEPALIVE,
    PING_TIMEOUT,
    ListenConnection,
    Notification,
)
from service.logs import FailureLog, reason

log = logging.getLogger("ai_service.api.hub")

FINISHED_CHANNEL = "ai_jobs_finished"
IDLE_UNLISTEN = 60.0  # UNLISTEN a profile channel nobody waited on for this long
DUE_RECHECK_MIN = 0.05  # a job due but not taken (another claim holds it): look again after,
DUE_RECHECK_MAX = 1.0  # doubling (jittered) up to this while it stays so (a bulk cancel)
T = TypeVar("T")


class Waiter:
    """One waiting request; woken by any of the (channel, payload) keys it registered."""

    def __init__(self, keys: Iterable[tuple[str, str | None]]) -> None:
        self.keys = list(dict.fromkeys(keys))
        self.channels = {ch for ch, _ in self.keys}
        self._event = anyio.Event()

    def wake(self) -> None:
        self._event.set()

    def rearm(self) -> None:
        """Forget past wake-ups; call *before* re-checking the database."""
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class NotifyHub:
    def __init__(self, url: str) -> None:
        self._url = url
        self._waiters: dict[str, dict[str | None, set[Waiter]]] = {}
        self._listening: set[str] = set()
        self._idle_since: dict[str, float] = {}
        self._dirty = False
        self._interrupt: anyio.CancelScope | None = None
        self._synced = anyio.Event()
        self._registered = anyio.Event()
        self._connected_event = anyio.Event()
        self._closing = anyio.Event()
        self.connected = False
        self.connects = 0
        self.notifications = 0

    # --- the receive loop -----------------------------------------------------------------
    async def run(self) -> None:
        """Keep one LISTEN connection open for the life of the process (reconnect on loss).

        Nothing ends it but cancellation: an error not known to happen is logged and retried
        like a lost connection (it ended the API's lifespan, reaper and long polls with it).
        The backoff starts over only after a connection lasted a keepalive round: a server
        that accepts and then drops every connection is not reconnected to 20 times a second.
        """
        backoff = Backoff(0.05, 5.0)
        failures = FailureLog(log)
        while True:
            try:
                conn = await ListenConnection.connect(self._url)
            except DatabaseUnavailable as exc:
                failures.failed("long-poll listener cannot connect", exc)
                await anyio.sleep(backoff.next())
                continue
            except Exception as exc:
                failures.failed("long-poll listener failed to connect", exc, unexpected=True)
                await anyio.sleep(backoff.next())
                continue
            since = time.monotonic()
            try:
                self._listening = set()
                await self._sync(conn)
                self.connected = True
                self.connects += 1
                connected, self._connected_event = self._connected_event, anyio.Event()
                connected.set()
                if failures.recovered() or self.connects > 1:  # not worth a line on a clean start
                    log.info("long-poll listener connected again")
                self._wake_all()  # catch-up: notifications sent while disconnected are gone
                await self._receive(conn)
            except (DatabaseUnavailable, TimeoutError) as exc:
                failures.failed("long-poll listener lost its connection", exc)
            except Exception as exc:
                failures.failed("long-poll listener failed", exc, unexpected=True)
            finally:
                self.connected = False
                self._listening = set()
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await conn.close()
            if time.monotonic() - since >= KEEPALIVE:
                backoff.reset()
            await anyio.sleep(backoff.next())

    async def _receive(self, conn: ListenConnection) -> None:
        while True:
            with anyio.CancelScope() as scope:
                self._interrupt = scope
                if not self._dirty:
                    async for n in conn.notifications(timeout=KEEPALIVE):
                        self._dispatch(n)
            self._interrupt = None
            if not scope.cancelled_caught:
                # A keepalive round ended (not a waiter's change): is the connection alive?
                with anyio.fail_after(PING_TIMEOUT):
                    await conn.ping()
            await self._sync(conn)

    async def _sync(self, conn: ListenConnection) -> None:
        """LISTEN what waiters need, UNLISTEN channels idle for a while, then tell waiters."""
        self._dirty = False
        now = time.monotonic()
        wanted = {FINISHED_CHANNEL} | {ch for ch, by in self._waiters.items() if by}
        new = sorted(wanted - self._listening)
        await conn.listen(*new)
        self._listening.update(new)
        idle = [ch for ch in sorted(self._listening - wanted)
                if now - self._idle_since.get(ch, now) >= IDLE_UNLISTEN]  # fmt: skip
        # Forgotten before the round trip: a request that subscribes meanwhile must see its
        # channel unlistened and ask for it again, not take it for listened and miss its NOTIFY.
        self._listening.difference_update(idle)
        for ch in idle:
            self._idle_since.pop(ch, None)
        await conn.unlisten(*idle)
        synced, self._synced = self._synced, anyio.Event()
        synced.set()

    def _dispatch(self, n: Notification) -> None:
        self.notifications += 1
        by_payload = self._waiters.get(n.channel)
        if not by_payload:
            return
        for w in by_payload.get(None, ()):
            w.wake()
        if n.payload:
            for w in by_payload.get(n.payload, ()):
                w.wake()

    def _wake_all(self) -> None:
        for by_payload in self._waiters.values():
            for waiters in by_payload.values():
                for w in waiters:
                    w.wake()

    # --- subscriptions --------------------------------------------------------------------
    @asynccontextmanager
    async def subscribe(self, keys: Iterable[tuple[str, str | None]]) -> AsyncIterator[Waiter]:
        waiter = Waiter(keys)
        for ch, payload in waiter.keys:
            self._waiters.setdefault(ch, {}).setdefault(payload, set()).add(waiter)
            self._idle_since.pop(ch, None)
        if not waiter.channels <= self._listening:
            self._request_sync()
        registered, self._registered = self._registered, anyio.Event()
        registered.set()
        try:
            yield waiter
        finally:
            now = time.monotonic()
            for ch, payload in waiter.keys:
                by_payload = self._waiters.get(ch, {})
                group = by_payload.get(payload)
                if group is not None:
                    group.discard(waiter)
                    if not group:
                        del by_payload[payload]
                if not by_payload:
                    self._waiters.pop(ch, None)
                    self._idle_since[ch] = now

    def _request_sync(self) -> None:
        self._dirty = True
        if self._interrupt is not None:
            self._interrupt.cancel()

    async def until_listening(self, channels: set[str]) -> None:
        """Return once every channel is LISTENed on the live connection."""
        while not (self.connected and channels <= self._listening):
            self._request_sync()
            await self._synced.wait()

    async def until_waiting(self, channel: str, payload: str | None = None) -> None:
        """Return once a request waits on (channel, payload) and the channel is listened
        (lets tests act at the right moment without sleeping)."""
        while payload not in self._waiters.get(channel, {}):
            await self._registered.wait()
        await self.until_listening({channel})

    async def until_connected(self, connects: int = 1) -> None:
        """Return once the hub has connected at least ``connects`` times and is connected."""
        while not (self.connected and self.connects >= connects):
            await self._connected_event.wait()

    def close_waiters(self) -> None:
        """The server is shutting down: every long-poll answers now with what it has (the job
        as it stands, no claim), and new ones do not wait. Otherwise they would be cut off
        after the server's graceful-shutdown timeout with a 500, on every rollout."""
        self._closing.set()

    def waiting(self, channel: str, payload: str | None = None) -> int:
        """How many requests wait on (channel, payload) now."""
        return len(self._waiters.get(channel, {}).get(payload, ()))

    # --- the long-poll loop ---------------------------------------------------------------
    async def wait_for(
        self,
        keys: Iterable[tuple[str, str | None]],
        check: Callable[[], Awaitable[T | None]],
        wait_seconds: float,
        *,
        gone: anyio.Event | None = None,
        due_in: Callable[[], Awaitable[float | None]] | None = None,
    ) -> T | None:
        """Run ``check`` until it returns something or ``wait_seconds`` pass, re-running it
        after every matching notification and once more at the end. When ``gone`` is set (the
        client hung up) it stops without checking again. ``due_in`` (seconds until what is
        waited for falls due by itself, None: nothing will) also re-runs it then: a job
        scheduled with ``run_after`` or backed off after a failure becomes claimable with no
        NOTIFY, and would otherwise wait for the end of the long poll."""
        if wait_seconds <= 0:
            return await check()
        deadline = anyio.current_time() + wait_seconds
        recheck = Backoff(DUE_RECHECK_MIN, DUE_RECHECK_MAX)
        async with self.subscribe(keys) as waiter:
            result = await check()
            if result is not None:
                return result
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                await _first(lambda: self.until_listening(waiter.channels), self._closing.wait)
            while True:
                waiter.rearm()
                result = await check()
                if result is not None or self._closing.is_set():
                    return result
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    return None
                due = None if due_in is None else await _due(due_in)
                if due is not None and due <= 0:  # due, yet not taken: back off while it lasts
                    due = recheck.next()
                elif due is not None:
                    recheck.reset()
                if due is not None:
                    remaining = min(remaining, due)
                with anyio.move_on_after(remaining):
                    await _first(
                        waiter.wait, self._closing.wait, gone.wait if gone is not None else None
                    )
                if gone is not None and gone.is_set():
                    return None


async def _due(due_in: Callable[[], Awaitable[float | None]]) -> float | None:
    """``due_in()``, or None (wake on a NOTIFY or at the end only) when the database cannot
    say: the waiting request must not fail for the sake of an earlier wake-up."""
    try:
        return await due_in()
    except DatabaseUnavailable as exc:
        log.debug("long-poll: when the next job falls due is unknown: %s", reason(exc))
        return None


async def _first(*waits: Callable[[], Awaitable[None]] | None) -> None:
    """Wait until any of ``waits`` returns."""
    async with anyio.create_task_group() as tg:

        async def run(fn: Callable[[], Awaitable[None]]) -> None:
            await fn()
            tg.cancel_scope.cancel()

        for fn in waits:
            if fn is not None:
                tg.start_soon(run, fn)
