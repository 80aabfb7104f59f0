"""Forward-only migrations: ``sql/NNNN_name.sql`` applied in order, each in one transaction
together with its row in ``ai_service_migrations`` (River's pattern).

Why the advisory lock: ten API and worker pods starting at once all run this; the lock makes
exactly one of them apply the files and the rest find nothing left to do. Why checksums: an
applied migration edited afterwards means production and a fresh database differ; we refuse
to start rather than drift silently.

Why newer versions are accepted: migrations run before new code rolls out and each is
compatible with the previous release (docs/deploy.md), so the old release's pods — still
running, rescheduled, or brought back by a rollback — must start on a schema one step ahead.
Why a lock timeout: DDL on ``ai_jobs`` waits behind any long reader, and every query queued
behind *it* waits too, claims and API reads included; a migration that cannot get its locks
within ``LOCK_TIMEOUT`` rolls back, lets the traffic through, and tries again.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from service.db.database import DatabaseUnavailable, _first_line
from service.db.params import connect_params
from service.db.queries import sql_dir

LOCK_KEY = 0x61695F6D6967  # "ai_mig"
LOCK_TIMEOUT = 5.0  # seconds one try of a migration may wait for a lock
LOCK_ATTEMPTS = 12  # tries before giving up (pauses of 1-10 s between them)
log = logging.getLogger("ai_service.migrate")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS ai_service_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migration files or the database's history of them are inconsistent."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Every ``NNNN_name.sql`` file, in version order, with gaps and duplicates refused."""
    found: list[Migration] = []
    for path in sorted((directory or sql_dir()).glob("[0-9]*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {mig.version:04d})")
    return found


def _applied(conn: psycopg.Connection[tuple[object, ...]], *, create: bool) -> dict[int, str]:
    if create:
        conn.execute(_VERSION_TABLE)
    elif conn.execute("SELECT to_regclass('ai_service_migrations')").fetchone() == (None,):
        return {}  # (a check only reads: it must not write DDL from every starting pod)
    rows = conn.execute("SELECT version, checksum FROM ai_service_migrations").fetchall()
    return {int(str(v)): str(c) for v, c in rows}


def _check_history(applied: dict[int, str], migrations: list[Migration]) -> None:
    """Refuse an edited or unknown applied migration; accept (and report) newer ones."""
    known = {m.version: m for m in migrations}
    latest = max(known, default=0)
    newer = sorted(v for v in applied if v > latest)
    for version, checksum in sorted(applied.items()):
        mig = known.get(version)  # (files are numbered without gaps: None means newer)
        if mig is not None and mig.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{mig.name} was edited after it was applied; "
                "migrations are forward-only: add a new file instead"
            )
    if newer:
        log.warning(
            "the database has migrations up to %04d, newer than this release's %04d: running "
            "on a schema one release ahead (each migration keeps the previous release working)",
            newer[-1],
            latest,
        )


@contextmanager
def _connection(url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection of its own; a lost or refused one is ``DatabaseUnavailable`` (the CLI's
    one line, exit 1: an init container or a Job retries)."""
    try:
        with psycopg.connect(url, autocommit=True, **connect_params(url)) as conn:
            yield conn
    except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
        # (read-only: a standby, during a switchover: passes, as a lost connection does)
        raise DatabaseUnavailable(_first_line(exc, "unavailable")) from exc


_PASSING = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction)


def pending_migrations(url: str, directory: Path | None = None) -> list[Migration]:
    """The migrations not yet applied to the database at ``url`` (reads only)."""
    migrations = load_migrations(directory)
    with _connection(url) as conn:
        applied = _applied(conn, create=False)
    _check_history(applied, migrations)
    return [m for m in migrations if m.version not in applied]


def migrate(
    url: str,
    directory: Path | None = None,
    *,
    lock_timeout: float = LOCK_TIMEOUT,
    attempts: int = LOCK_ATTEMPTS,
) -> list[Migration]:
    """Apply pending migrations under an advisory lock; return the ones this call applied."""
    migrations = load_migrations(directory)
    done: list[Migration] = []
    with _connection(url) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            applied = _applied(conn, create=True)
            _check_history(applied, migrations)
            for mig in migrations:
                if mig.version not in applied:
                    try:
                        _apply(conn, mig, lock_timeout, attempts)
                    except psycopg.DatabaseError as exc:
                        if isinstance(exc, _PASSING):  # an outage: DatabaseUnavailable
                            raise
                        raise MigrationError(  # an error in its SQL: one line, not a traceback
                            f"migration {mig.version:04d}_{mig.name} failed and was rolled "
                            f"back: {_first_line(exc, type(exc).__name__)}"
                        ) from exc
                    done.append(mig)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return done


def _apply(
    conn: psycopg.Connection[tuple[object, ...]], mig: Migration, lock_timeout: float, attempts: int
) -> None:
    """One migration and its version row in one transaction, retried while locks are busy."""
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {max(1, round(lock_timeout * 1000))}")
                conn.execute(mig.sql.encode())
                conn.execute(
                    "INSERT INTO ai_service_migrations (version, name, checksum) "
                    "VALUES (%s, %s, %s)",
                    (mig.version, mig.name, mig.checksum),
                )
            return
        except psycopg.errors.LockNotAvailable as exc:
            if attempt == attempts:
                raise MigrationError(
                    f"migration {mig.version:04d}_{mig.name} could not take its locks in "
                    f"{attempts} tries of {lock_timeout:g}s (a long transaction holds them: "
                    "see pg_locks / pg_stat_activity); it was rolled back, and any migrations "
                    "before it in this run stay applied"
                ) from exc
            pause = min(10.0, float(attempt)) * random.uniform(0.5, 1.0)
            log.warning(
                "migration %04d_%s waited %gs for a lock (try %d of %d); retrying in %.1fs",
                mig.version,
                mig.name,
                lock_timeout,
                attempt,
                attempts,
                pause,
            )
            time.sleep(pause)
