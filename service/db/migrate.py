"""Forward-only migrations: ``sql/NNNN_name.sql`` applied in order, each in one transaction
together with its row in ``ai_service_migrations`` (River's pattern).

Why the advisory lock: ten API and worker pods starting at once all run this; the lock makes
exactly one of them apply the files and the rest find nothing left to do. Why checksums: an
applied migration edited afterwards means production and a fresh database differ; we refuse
to start rather than drift silently.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from service.db.params import connect_params
from service.db.queries import sql_dir

LOCK_KEY = 0x61695F6D6967  # "ai_mig"
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


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, str]:
    conn.execute(_VERSION_TABLE)
    rows = conn.execute("SELECT version, checksum FROM ai_service_migrations").fetchall()
    return {int(str(v)): str(c) for v, c in rows}


def _check_history(applied: dict[int, str], migrations: list[Migration]) -> None:
    known = {m.version: m for m in migrations}
    for version, checksum in sorted(applied.items()):
        mig = known.get(version)
        if mig is None:
            raise MigrationError(
                f"database has migration {version:04d}, which this version of ai-service does "
                "not know: it is older than the schema (roll forward, not back)"
            )
        if mig.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{mig.name} was edited after it was applied; "
                "migrations are forward-only: add a new file instead"
            )


def pending_migrations(url: str, directory: Path | None = None) -> list[Migration]:
    """The migrations not yet applied to the database at ``url``."""
    migrations = load_migrations(directory)
    with psycopg.connect(url, autocommit=True, **connect_params(url)) as conn:
        applied = _applied(conn)
    _check_history(applied, migrations)
    return [m for m in migrations if m.version not in applied]


def migrate(url: str, directory: Path | None = None) -> list[Migration]:
    """Apply pending migrations under an advisory lock; return the ones this call applied."""
    migrations = load_migrations(directory)
    done: list[Migration] = []
    with psycopg.connect(url, autocommit=True, **connect_params(url)) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            applied = _applied(conn)
            _check_history(applied, migrations)
            for mig in migrations:
                if mig.version in applied:
                    continue
                with conn.transaction():
                    conn.execute(mig.sql.encode())
                    conn.execute(
                        "INSERT INTO ai_service_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (mig.version, mig.name, mig.checksum),
                    )
                done.append(mig)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return done
