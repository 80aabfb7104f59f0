"""Migrations: snapshot equality, exactly-once under a race, --check, forward-only guards."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from service.db.migrate import MigrationError, load_migrations, migrate, pending_migrations
from service.jobs.model import EARLIEST, LATEST, Job
from tests.helpers import ROOT, free_port
from tests.schema_dump import dump_schema

SNAPSHOT = ROOT / "sql" / "schema.snapshot.sql"


def test_all_migrations_yield_the_schema_snapshot(empty_db_url: str) -> None:
    migrate(empty_db_url)
    actual = dump_schema(empty_db_url)
    if os.environ.get("UPDATE_SCHEMA_SNAPSHOT") == "1":
        SNAPSHOT.write_text(actual)
    assert SNAPSHOT.exists(), "run `make schema-snapshot` to create sql/schema.snapshot.sql"
    assert actual == SNAPSHOT.read_text(), (
        "migrations no longer produce sql/schema.snapshot.sql; if the change is intended, "
        "run `make schema-snapshot` and commit the diff"
    )


def test_migrate_is_idempotent_and_check_reports_pending(empty_db_url: str) -> None:
    assert [m.version for m in pending_migrations(empty_db_url)] == [
        m.version for m in load_migrations()
    ]
    assert len(migrate(empty_db_url)) == len(load_migrations())
    assert migrate(empty_db_url) == []
    assert pending_migrations(empty_db_url) == []


def test_ten_concurrent_runners_migrate_exactly_once(empty_db_url: str) -> None:
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: migrate(empty_db_url), range(10)))
    assert sum(len(r) for r in results) == len(load_migrations())
    with psycopg.connect(empty_db_url) as conn:
        rows = conn.execute("SELECT version FROM ai_service_migrations ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == [m.version for m in load_migrations()]


def test_edited_applied_migration_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
    migrate(empty_db_url, tmp_path)
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id bigint);")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(empty_db_url, tmp_path)


def test_failed_migration_leaves_no_version_row(empty_db_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE t2 (id int); SELECT 1/0;")
    # one line naming the migration and the error (it was a traceback from the CLI)
    with pytest.raises(MigrationError, match="0002_broken failed and was rolled back: divi"):
        migrate(empty_db_url, tmp_path)
    with psycopg.connect(empty_db_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM ai_service_migrations")]
        t2 = conn.execute("SELECT to_regclass('t2')").fetchone()
    assert versions == [1]
    assert t2 == (None,)


def test_a_read_only_database_is_an_outage_not_a_migration_error(empty_db_url: str) -> None:
    """A standby during a switchover refuses writes: retried like a lost connection (the
    migrate Job and init containers run again), not a traceback."""
    from service.db import DatabaseUnavailable

    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'.encode())
    with pytest.raises(DatabaseUnavailable, match="read-only"):
        migrate(empty_db_url)


def test_gap_in_numbering_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="0002 is missing"):
        load_migrations(tmp_path)


def test_the_previous_release_starts_on_a_newer_schema(
    empty_db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Migrations run before the new code rolls out; the old release's pods (still running,
    rescheduled, or back after a rollback) must start on the schema one step ahead."""
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir(), old.mkdir()
    for d in (new, old):
        (d / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
    (new / "0002_second.sql").write_text("ALTER TABLE t1 ADD COLUMN note text;")
    assert [m.version for m in migrate(empty_db_url, new)] == [1, 2]
    with caplog.at_level("WARNING", logger="ai_service.migrate"):
        assert pending_migrations(empty_db_url, old) == []
        assert migrate(empty_db_url, old) == []
    assert "up to 0002, newer than this release's 0001" in caplog.text
    (old / "0001_first.sql").write_text("CREATE TABLE t1 (id bigint);")  # still refused
    with pytest.raises(MigrationError, match="edited after it was applied"):
        pending_migrations(empty_db_url, old)


def test_check_only_reads(empty_db_url: str) -> None:
    assert pending_migrations(empty_db_url) == load_migrations()
    with psycopg.connect(empty_db_url) as conn:
        exists = conn.execute("SELECT to_regclass('ai_service_migrations')").fetchone()
    assert exists == (None,)


class ReleaseOnRetry(logging.Handler):
    """Ends the blocking transaction when the migration reports its first lock wait."""

    def __init__(self, blocker: psycopg.Connection[tuple[object, ...]]) -> None:
        super().__init__(logging.WARNING)
        self.blocker = blocker
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "waited" in record.getMessage():
            self.retries += 1
            self.blocker.rollback()


def test_a_migration_that_cannot_lock_backs_off_and_retries(
    empty_db_url: str, tmp_path: Path
) -> None:
    """DDL queued behind a long reader would queue every later query behind it; with a lock
    timeout it rolls back, lets the traffic through, and tries again."""
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
    migrate(empty_db_url, tmp_path)
    (tmp_path / "0002_alter.sql").write_text("ALTER TABLE t1 ADD COLUMN note text;")
    with psycopg.connect(empty_db_url) as blocker:
        blocker.execute("SELECT * FROM t1")  # holds ACCESS SHARE until the transaction ends
        with pytest.raises(MigrationError, match="could not take its locks in 2 tries"):
            migrate(empty_db_url, tmp_path, lock_timeout=0.05, attempts=2)
        assert [m.version for m in pending_migrations(empty_db_url, tmp_path)] == [2]
        handler = ReleaseOnRetry(blocker)
        logging.getLogger("ai_service.migrate").addHandler(handler)
        try:
            blocker.execute("SELECT * FROM t1")
            applied = migrate(empty_db_url, tmp_path, lock_timeout=0.05, attempts=5)
        finally:
            logging.getLogger("ai_service.migrate").removeHandler(handler)
    assert [m.version for m in applied] == [2] and handler.retries >= 1
    assert pending_migrations(empty_db_url, tmp_path) == []


def test_cli_migrate_check_exit_codes(empty_db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_db_url}
    cmd = [sys.executable, "-m", "service", "migrate", "--check"]
    pending = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert pending.returncode == 1, pending.stderr
    assert "0001_jobs" in pending.stdout
    applied = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
    clean = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stderr


@pytest.mark.parametrize("args", [["migrate"], ["migrate", "--check"], ["dev"]])
def test_cli_migrate_on_an_unreachable_database_says_so_in_one_line(args: list[str]) -> None:
    """The migrate Job and the init container's ``--check`` fail and are retried by
    Kubernetes; their log should say why, not hold a traceback. ``dev`` on a DATABASE_URL
    that does not answer, the same."""
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=5"
    env = {**os.environ, "DATABASE_URL": url}
    cmd = [sys.executable, "-m", "service", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("ai-service: database unavailable: "), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_0004_repairs_rows_no_reader_could_load_and_then_refuses_them(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Rows written around the API before 0004 (an operator's UPDATE) that broke every claim
    and listing they met are repaired as the migration documents, and the service reads them."""
    for m in load_migrations()[:3]:
        (tmp_path / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    migrate(empty_db_url, tmp_path)
    rows = {
        "due": ("pending", "run_after = '-infinity'"),
        "never": ("pending", "run_after = 'infinity'"),
        "array": ("pending", "input = '[1, 2]'"),
        "scalar-done": ("completed", "input = '\"x\"', finished_at = 'infinity'"),
        "odd-trace": ("pending", "trace_context = '{\"traceparent\": 5}'"),
        "nested-trace": ("pending", 'trace_context = \'{"traceparent": ["x"]}\''),
        "fine": ("pending", 'trace_context = \'{"traceparent": "t"}\''),
        "deep": ("pending", "input = '" + '{"x": ' * 500 + "1" + "}" * 500 + "'"),
    }
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        for ref, (status, assignment) in rows.items():
            conn.execute(
                "INSERT INTO ai_jobs (id, owner_service, task_type, model_profile, owner_ref,"
                " status) VALUES (gen_random_uuid(), 'ops', 'llm_chat', 'p', %s, %s)",
                (ref, status),
            )
            conn.execute(f"UPDATE ai_jobs SET {assignment} WHERE owner_ref = %s", (ref,))
        with pytest.raises(psycopg.DataError):  # what a claim of these rows met
            conn.execute("SELECT run_after FROM ai_jobs").fetchall()
    migrate(empty_db_url)
    with psycopg.connect(empty_db_url, autocommit=True, row_factory=dict_row) as conn:
        got = {r["owner_ref"]: r for r in conn.execute("SELECT * FROM ai_jobs").fetchall()}
    jobs = {ref: Job.from_row(row) for ref, row in got.items()}  # every row reads back
    assert jobs["due"].run_after == EARLIEST and jobs["due"].status == "pending"
    assert jobs["never"].run_after == LATEST and jobs["never"].status == "pending"
    assert jobs["array"].input == {"value": [1, 2]}
    assert (jobs["array"].status, jobs["array"].error_category) == ("failed", "invalid_input")
    assert jobs["scalar-done"].input == {"value": "x"}
    assert jobs["scalar-done"].status == "completed"
    assert jobs["scalar-done"].finished_at == LATEST
    assert jobs["odd-trace"].trace_context is None
    assert jobs["nested-trace"].trace_context is None
    assert jobs["fine"].trace_context == {"traceparent": "t"}
    assert jobs["fine"].status == "pending" and jobs["fine"].input == {}
    deep = jobs["deep"]
    assert (deep.status, deep.error_category, deep.lease_expires_at) == (
        "failed", "invalid_input", None
    )  # fmt: skip
    assert json.loads(deep.input["value_text"]) == json.loads(
        '{"x": ' * 500 + "1" + "}" * 500
    )  # kept whole, as text
