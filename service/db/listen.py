"""A dedicated LISTEN connection (never from the pool: a pooled or pgbouncer connection may be
handed to someone else between notifications, and the subscription would silently vanish).

Channels are quoted identifiers (``"ai_jobs:qwen2.5-14b"``), so profile names with dots and
dashes work. When the connection dies, iteration raises ``DatabaseUnavailable``; the caller
reconnects and, because NOTIFY is only a hint, claims once to catch up on what it missed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, NamedTuple

import anyio
import psycopg
from psycopg import sql

from service.db.database import DatabaseUnavailable, _translate_errors
from service.db.params import connect_params

BATCH = 500  # channels per round trip
# Both listeners (the worker's, the API's hub) wait for notifications this long per round, then
# ping: a connection whose server vanished without a FIN shows up within a round and a ping.
KEEPALIVE = 10.0
PING_TIMEOUT = 5.0


def profile_channel(profile: str) -> str:
    """The channel the insert trigger notifies for a profile's new jobs (migration 0001)."""
    return f"ai_jobs:{profile}"


class Notification(NamedTuple):
    channel: str
    payload: str


class ListenConnection:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn
        self.channels: set[str] = set()

    @classmethod
    async def connect(cls, url: str, channels: Iterable[str] = ()) -> ListenConnection:
        async with _translate_errors():
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, application_name="ai-service-listener", **connect_params(url)
            )
        self = cls(conn)
        try:
            await self.listen(*channels)
        except BaseException:
            # a connection that could not listen is not handed out, nor left open
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.close()
            raise
        return self

    async def listen(self, *channels: str) -> None:
        await self._each("LISTEN", channels)
        self.channels.update(channels)

    async def unlisten(self, *channels: str) -> None:
        await self._each("UNLISTEN", channels)
        self.channels.difference_update(channels)

    async def _each(self, command: str, channels: Sequence[str]) -> None:
        """One round trip per ``BATCH`` channels (statements joined by ``;``, sent without
        parameters as one simple query): the API's hub may need thousands at once (long-poll
        claims name up to 50 profiles each), one LISTEN per round trip took seconds."""
        for i in range(0, len(channels), BATCH):
            statements = sql.SQL("; ").join(
                sql.SQL(command + " {}").format(sql.Identifier(c)) for c in channels[i : i + BATCH]
            )
            async with _translate_errors():
                await self._conn.execute(statements)

    async def notifications(self, timeout: float | None = None) -> AsyncIterator[Notification]:
        """Yield notifications as they arrive, for ``timeout`` seconds in all (psycopg's
        deadline, not a silence; None: for ever). Raises ``DatabaseUnavailable`` when the
        connection is lost."""
        try:
            async for n in self._conn.notifies(timeout=timeout):
                yield Notification(n.channel, n.payload)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(str(exc).strip() or "listener connection lost") from exc

    async def ping(self) -> None:
        async with _translate_errors():
            await self._conn.execute("SELECT 1")

    @property
    def closed(self) -> bool:
        return self._conn.closed

    async def close(self) -> None:
        await self._conn.close()


__all__ = [
    "KEEPALIVE",
    "PING_TIMEOUT",
    "DatabaseUnavailable",
    "ListenConnection",
    "Notification",
    "profile_channel",
]
