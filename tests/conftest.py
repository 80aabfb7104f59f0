"""Test fixtures: a real PostgreSQL for every test, never a fake.

The session starts one server (the embedded wheel, or ``TEST_DATABASE_URL`` when set),
migrates a template database once, and gives each test its own database cloned from the
template (procrastinate's pattern) so tests are isolated and can run in any order.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from service.db import Database, open_database
from service.db.embedded import FAST_SETTINGS, EmbeddedPostgres
from service.db.migrate import migrate
from service.jobs import JobRepository
from service.metrics import labels


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every coroutine test runs on anyio's asyncio backend without per-test boilerplate.
    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and inspect.iscoroutinefunction(fn):
            item.add_marker(pytest.mark.anyio)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def with_dbname(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL server the tests may create databases on.

    Its data directory is not under pytest's tmp_path: every pytest session that starts on
    the machine resets ``/tmp/pytest-of-<user>`` to mode 0700, which, when the tests run as
    root, locks the server's own system user out of its data mid-run (seen: teardown errors
    ``could not access directory ... Permission denied`` while another session started)."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="aisvc-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data", settings=FAST_SETTINGS)
        server.start()
        try:
            yield server.url
        finally:
            server.close()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """A migrated template database, created once per session."""
    name = f"aisvc_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    migrate(with_dbname(pg_admin_url, name))
    try:
        yield name
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def _create_db(admin_url: str, template: str | None) -> str:
    name = f"aisvc_t_{uuid.uuid4().hex[:12]}"
    tpl = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{tpl}'.encode())
    return name


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = _create_db(pg_admin_url, template_db)
    yield with_dbname(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no migrations applied."""
    name = _create_db(pg_admin_url, None)
    yield with_dbname(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(db_url, max_size=12)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def repo(db: Database) -> JobRepository:
    return JobRepository(db, backoff_base=0.0, backoff_max=0.0)


@pytest.fixture(autouse=True)
def _metric_label_bounds_per_test() -> None:
    """Each test meets its metric attribute bounds afresh: the whole session creates far more
    (unique) profiles than one process would, and a test asserting its own profile's series
    must not find it reported as ``other`` because earlier tests used up the bound."""
    labels.profiles.reset()
    labels.task_types.reset()
    labels.error_categories.reset()
