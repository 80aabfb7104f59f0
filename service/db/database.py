"""Connection pool and the one API the rest of the service uses to run named queries.

Why a wrapper: psycopg is imported only under ``service/db/`` (DESIGN.md), so the job
repository speaks in query names and plain Python values, and connection trouble surfaces as
``DatabaseUnavailable`` that the API maps to 503 and the worker rides out with retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, JsonbBinaryDumper, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from service.db.params import connect_params, session_settings
from service.db.pool import ReconnectingPool
from service.db.queries import queries

Row = dict[str, Any]
T = TypeVar("T")
Params = Mapping[str, Any] | None
Prepare = bool | None
PING_TIMEOUT_S = 2.0  # readiness: under the probes' 3 s (deploy/k8s)
ANSWER_MARGIN_S = 10.0  # past statement_timeout: the server would have answered by now


class DatabaseError(Exception):
    """Base of database failures the callers are expected to handle."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot serve the request right now (down, restarting, pool exhausted,
    or read-only during a failover): retrying the same request later can succeed."""


class StatementTimeout(DatabaseUnavailable):
    """The server cut a statement at ``DB_STATEMENT_TIMEOUT`` and rolled it back. Retryable
    for the worker (a claim slowed by a busy server); the API names the setting, since the
    same request may well take as long again."""


class IntegrityViolation(DatabaseError):
    """A constraint refused the write (bad data that slipped past validation)."""


class ValueRefused(DatabaseError):
    """PostgreSQL cannot store a value as given, however often it is retried: a NUL in text
    or jsonb, a number or time out of range (SQLSTATE class 22), a string past jsonb's
    256 MB (class 54), or psycopg refusing to send it."""


_encoder = msgspec.json.Encoder()


def jsonb(value: Any) -> Any:
    """Wrap any JSON value (dict, list, scalar, None-as-JSON-null) as a jsonb parameter."""
    return Jsonb(value)


def _configure_adapters(conn: psycopg.AsyncConnection[Any]) -> None:
    # dicts become jsonb (also inside arrays for the batch insert); msgspec is ~5x faster
    # than the json module on both directions.
    conn.adapters.register_dumper(dict, JsonbBinaryDumper)
    set_json_dumps(_encoder.encode, context=conn)
    set_json_loads(_loads, context=conn)


def _loads(data: str | bytes) -> Any:
    """jsonb as Python values. A value nested deeper than the decoder's recursion limit
    (~950 levels) stays raw JSON (``msgspec.Raw``, encoded back verbatim) instead of raising:
    the database refuses such values since migration 0004, but one restored with triggers off
    would otherwise make every claim that meets it fail after the claim committed, stranding
    its whole batch in ``running``, and every read of it fail."""
    try:
        return msgspec.json.decode(data)
    except RecursionError:
        return msgspec.Raw(data)


def _configurer(
    settings: Mapping[str, str],
) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    """The pool's per-connection setup: adapters, autocommit, and ``settings`` (``SET`` in one
    round trip, once per new connection; see ``params`` for why not at startup)."""
    query = "SELECT " + ", ".join("set_config(%s, %s, false)" for _ in settings)
    values = [v for item in settings.items() for v in item]

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        _configure_adapters(conn)
        await conn.set_autocommit(True)
        if settings:
            await conn.execute(query, values)

    return configure


@asynccontextmanager
async def _translate_errors() -> AsyncIterator[None]:
    # Why the classes matter: the worker retries DatabaseUnavailable and nothing else, so a
    # permanent error taken for it retries one batch forever, and a passing one not taken for
    # it crashes the worker. Class 54 (program_limit_exceeded) is an OperationalError in
    # psycopg but permanent; 25006 (read_only_sql_transaction, a write reaching a standby
    # during a switchover) is an InternalError but passes.
    try:
        yield
    except (psycopg.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
        if _notify_queue_full(exc):  # class 54, yet it passes: retried, not refused
            raise DatabaseUnavailable(_first_line(exc, "NOTIFY queue full")) from exc
        raise ValueRefused(_first_line(exc, "value refused")) from exc
    except psycopg.errors.QueryCanceled as exc:
        # 57014 is also a cancel request (psycopg sends one when a task is cancelled); only
        # the server's timeout says so in its message (in English: lc_messages permitting).
        first = _first_line(exc, "statement cancelled")
        if "statement timeout" in first:
            raise StatementTimeout(first) from exc
        raise DatabaseUnavailable(first) from exc
    except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction, PoolTimeout) as exc:
        raise DatabaseUnavailable(_first_line(exc, "unavailable")) from exc
    except psycopg.errors.IntegrityError as exc:
        raise IntegrityViolation(_first_line(exc, "constraint violated")) from exc


def _notify_queue_full(exc: psycopg.Error) -> bool:
    """The server's NOTIFY queue is full (a session that LISTENs sits in a long transaction,
    so the queue cannot be trimmed): every insert and completion fails until it lets go.
    Refused as a bad value, a valid job was answered 422 and a stored result taken for one
    that cannot be stored. Told by the raising function, which no ``lc_messages`` changes."""
    return exc.diag.source_function == "PreCommit_Notify"


def _stale_plan(exc: psycopg.Error) -> bool:
    """Whether ``exc`` is a prepared statement whose result columns changed since it was
    prepared (``ALTER TABLE ... ADD COLUMN`` by a migration, for a statement over ``*``).
    Told by the server function raising it, which no ``lc_messages`` translates."""
    return exc.diag.source_function == "RevalidateCachedQuery"


async def _forget_prepared(conn: psycopg.AsyncConnection[Any]) -> None:
    """Drop the connection's prepared statements; psycopg forgets its cache of them when it
    sees ``DEALLOCATE ALL`` go through, and prepares afresh. A connection that cannot is
    closed (the pool replaces it): either way the error does not repeat for its lifetime."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.rollback()
        await conn.execute("DEALLOCATE ALL")
    except psycopg.Error:
        await conn.close()


def _unanswered(what: str, within: float | None) -> str:
    return f"PostgreSQL did not answer {what} within {within or 0:g} s"


def _first_line(exc: Exception, default: str) -> str:
    return (str(exc).strip().splitlines() or [default])[0] or default


class Session:
    """Runs named queries on one connection (inside a transaction when opened by one).

    ``traced=False`` runs a statement on a plain cursor, past the connection's cursor factory:
    the psycopg instrumentation replaces that factory with one that wraps every statement
    (a proxy object, a coroutine, a check of the OpenTelemetry context). The worker's own
    bookkeeping (claims, batched completions) runs on every job, never inside a span, and
    would only ever be dropped by ``ChildSpansOnly``; measured end to end that wrapping cost
    ~25 µs of worker CPU per job with tracing on. With tracing off the two paths are the same.

    ``answer_within``: a statement with no answer by then (the server's statement timeout and
    a margin) is abandoned as ``DatabaseUnavailable`` and its connection closed. A server that
    stopped (SIGSTOP, a hung host) while its kernel still acknowledges packets trips neither
    its own timeout nor TCP's; a request holding a connection then hung for the whole stall.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Row], answer_within: float | None) -> None:
        self._conn = conn
        self._within = answer_within

    async def _run(
        self, name: str, params: Params, prepare: Prepare, traced: bool, read: _Read[T]
    ) -> T:
        with anyio.move_on_after(self._within):
            async with _translate_errors():
                cur = await self._cursor(traced).execute(queries()[name], params, prepare=prepare)
                return await read(cur)
        raise DatabaseUnavailable(_unanswered(name, self._within))

    def _cursor(self, traced: bool) -> psycopg.AsyncCursor[Row]:
        if traced:
            return self._conn.cursor()
        return psycopg.AsyncCursor(self._conn, row_factory=self._conn.row_factory)

    async def fetch(
        self, name: str, params: Params = None, *, prepare: Prepare = None, traced: bool = True
    ) -> list[Row]:
        return await self._run(name, params, prepare, traced, _all)

    async def fetchrow(
        self, name: str, params: Params = None, *, prepare: Prepare = None, traced: bool = True
    ) -> Row | None:
        return await self._run(name, params, prepare, traced, _one)

    async def execute(
        self, name: str, params: Params = None, *, prepare: Prepare = None, traced: bool = True
    ) -> int:
        return await self._run(name, params, prepare, traced, _count)


_Read = Callable[[psycopg.AsyncCursor[Row]], Awaitable[T]]


async def _all(cur: psycopg.AsyncCursor[Row]) -> list[Row]:
    return await cur.fetchall() if cur.description else []


async def _one(cur: psycopg.AsyncCursor[Row]) -> Row | None:
    return await cur.fetchone() if cur.description else None


async def _count(cur: psycopg.AsyncCursor[Row]) -> int:
    return cur.rowcount


class Database:
    """A pool of autocommit connections; ``transaction()`` for multi-statement work."""

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]],
        url: str,
        answer_within: float | None = None,
    ) -> None:
        self._pool = pool
        self.url = url
        self.answer_within = answer_within  # see Session
        self._checking = False

    async def fetch(
        self, name: str, params: Params = None, *, prepare: Prepare = None, traced: bool = True
    ) -> list[Row]:
        async with self.session() as s:
            return await s.fetch(name, params, prepare=prepare, traced=traced)

    async def fetchrow(
        self, name: str, params: Params = None, *, prepare: Prepare = None, traced: bool = True
    ) -> Row | None:
        async with self.session() as s:
            return await s.fetchrow(name, params, prepare=prepare, traced=traced)

    async def execute(
        self, name: str, params: Params = None, *, prepare: Prepare = None, traced: bool = True
    ) -> int:
        async with self.session() as s:
            return await s.execute(name, params, prepare=prepare, traced=traced)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        async with _translate_errors(), self._connection() as conn:
            yield Session(conn, self.answer_within)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        """A transaction whose BEGIN and COMMIT are bounded like its statements (see
        ``Session``; no statement timeout applies to a COMMIT). A COMMIT left unanswered has
        an unknown outcome: ``DatabaseUnavailable`` says so, and the caller's retry must be
        one that is safe to repeat (the API's keyed creates are)."""
        async with _translate_errors(), self._connection() as conn:
            tx = conn.transaction()
            with anyio.move_on_after(self.answer_within) as began:
                await tx.__aenter__()
            if began.cancelled_caught:
                raise DatabaseUnavailable(_unanswered("BEGIN", self.answer_within))
            try:
                yield Session(conn, self.answer_within)
            except BaseException as exc:
                with anyio.move_on_after(self.answer_within):
                    await tx.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            with anyio.move_on_after(self.answer_within) as scope:
                await tx.__aexit__(None, None, None)
            if scope.cancelled_caught:
                unknown = ": whether it took effect is unknown"
                raise DatabaseUnavailable(_unanswered("COMMIT", self.answer_within) + unknown)

    @asynccontextmanager
    async def _connection(
        self, timeout: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        """A pooled connection; one found broken has its idle siblings tested (``_drop_stale``)."""
        async with self._pool.connection(timeout=timeout) as conn:
            try:
                yield conn
            except (DatabaseUnavailable, psycopg.OperationalError):  # (translated or not)
                if conn.broken:
                    await self._drop_stale()
                raise
            except psycopg.errors.FeatureNotSupported as exc:
                if not _stale_plan(exc):
                    raise
                await _forget_prepared(conn)
                raise DatabaseUnavailable(
                    "the schema changed under a prepared statement (a migration ran): "
                    "this connection's prepared statements are dropped, retry"
                ) from exc

    async def _drop_stale(self) -> None:
        """A pooled connection turned out broken (the server restarted, failed over, or
        killed it): its idle siblings most likely are too, and each would fail one more
        request (a 503, a failed claim) before the pool replaced it. Test them all now, once
        at a time and bounded, so the next requests get live connections."""
        if self._checking:
            return
        self._checking = True
        try:
            with anyio.move_on_after(2):
                await self._pool.check()
        finally:
            self._checking = False

    async def ping(self) -> None:
        """Raise ``DatabaseUnavailable`` unless a round trip to the server succeeds. Bounded
        at 2 s, the wait for a connection and the round trip together: readiness probes
        give up after 3 s (``deploy/k8s``) and should read the answer's reason, not time
        out. A server that accepts bytes and never answers (stopped, or a network that
        drops without a reset) would otherwise hold ``/readyz`` until TCP gives up; the
        connection whose ``SELECT 1`` is abandoned is closed by psycopg, not pooled again."""
        with anyio.move_on_after(PING_TIMEOUT_S) as scope:
            async with _translate_errors(), self._connection(timeout=PING_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
        if scope.cancelled_caught:
            raise DatabaseUnavailable(f"PostgreSQL did not answer within {PING_TIMEOUT_S:g} s")

    async def close(self) -> None:
        await self._pool.close()


async def open_database(
    url: str,
    *,
    max_size: int = 10,
    min_size: int = 1,
    timeout: float = 5.0,
    statement_timeout: float | None = 60.0,
    answer_margin: float = ANSWER_MARGIN_S,
) -> Database:
    """Open a pool and wait for its first connection, failing fast on a bad URL.

    ``timeout`` bounds how long a statement waits for a pooled connection. While the server
    is down no connection comes, so this is how long an API request hangs before its 503:
    psycopg_pool's default (30 s) outlasts most callers' own timeouts. ``statement_timeout``
    and the network bounds: see ``params``; a statement unanswered ``answer_margin`` past the
    sessions' statement timeout (``statement_timeout``, or the one the URL's options or
    ``PGOPTIONS`` set) is abandoned (``Session``); with no statement timeout, never."""
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = ReconnectingPool(
        url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs={"row_factory": dict_row, **connect_params(url)},
        configure=_configurer(session_settings(url, statement_timeout)),
        open=False,
        timeout=timeout,
        name="ai-service",
    )
    async with _translate_errors():
        await pool.open(wait=True, timeout=30)
        # the timeout sessions really have: the URL's options or PGOPTIONS win over ours
        async with pool.connection() as conn:
            cur = await conn.execute(queries()["effective_statement_timeout"])
            row = await cur.fetchone()
    effective = float(row["seconds"]) if row is not None else 0.0
    within = effective + answer_margin if effective > 0 else None
    return Database(pool, url, within)
