"""The only package that imports psycopg: pool, named queries, migrations, embedded server."""

from service.db.database import (
    Database,
    DatabaseError,
    DatabaseUnavailable,
    IntegrityViolation,
    Row,
    Session,
    StatementTimeout,
    ValueRefused,
    jsonb,
    open_database,
)

__all__ = [
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "IntegrityViolation",
    "Row",
    "Session",
    "StatementTimeout",
    "ValueRefused",
    "jsonb",
    "open_database",
]
