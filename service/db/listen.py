"""A dedicated LISTEN connection (never from the pool: a pooled or pgbouncer connection may be
handed to someone else between notifications, and the subscription would silently vanish).

Channels are quoted identifiers (``"ai_jobs:qwen2.5-14b"``), so profile names with dots and
dashes work. When the connection dies, iteration raises ``DatabaseUnavailable``; the caller
reconnects and, because NOTIFY is only a hint, claims once to catch up on what it missed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from service.db.database import DatabaseUnavailable, _translate_errors
from service.db.params import connect_params


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
        for ch in channels:
            await self.listen(ch)
        return self

    async def listen(self, channel: str) -> None:
        async with _translate_errors():
            await self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self.channels.add(channel)

    async def unlisten(self, channel: str) -> None:
        async with _translate_errors():
            await self._conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
        self.channels.discard(channel)

    async def notifications(self, timeout: float | None = None) -> AsyncIterator[Notification]:
        """Yield notifications as they arrive; stop after ``timeout`` seconds of silence
        (None: never). Raises ``DatabaseUnavailable`` when the connection is lost."""
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


__all__ = ["DatabaseUnavailable", "ListenConnection", "Notification"]
