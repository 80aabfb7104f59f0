"""``MIGRATE_ON_START`` for real ``ai-service api`` and ``ai-service worker`` processes on a
database that has never been migrated.

Unset (default true), the process applies every migration before it serves, so once its
``/readyz`` answers 200 the schema is complete. ``false`` (Kubernetes and compose, where a
``migrate`` Job does it), the process leaves the database alone and refuses to start on a
schema that lacks migrations. Tests wait on readiness and database outcomes; none sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from service.config import FIELDS
from service.db.migrate import load_migrations
from tests.helpers import ROOT, free_port, http_ok, wait_for
from tests.worker_handlers import INVOCATIONS_ENV, PROFILES_ENV, read_invocations

pytestmark = pytest.mark.slow

PROFILE = "test-a"


class ServiceProcess:
    """``python -m service api|worker|dev`` (the ``ai-service`` entry point) with a clean
    environment: no setting is inherited from the shell, so an unset one takes its default."""

    def __init__(self, command: str, db_url: str, tmp: Path, **env: str) -> None:
        self.command = command
        self.port = free_port()
        self.output = tmp / f"{command}.log"
        self.invocations = tmp / "invocations.log"
        clean = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
        args = [sys.executable, "-m", "service", command]
        if command in ("api", "dev"):
            own = {"HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(self.port)}
            if command == "dev":  # (its worker: a port of its own)
                own.update(WORKER_HTTP_HOST="127.0.0.1", WORKER_HTTP_PORT=str(free_port()))
        else:
            args += ["--profile", PROFILE]
            own = {
                "WORKER_HTTP_HOST": "127.0.0.1",
                "WORKER_HTTP_PORT": str(self.port),
                "WORKER_POLL_INTERVAL": "1h",  # a job it runs was found by NOTIFY or catch-up
                "AI_SERVICE_EXTRA_HANDLERS": "tests.worker_handlers:register",
                PROFILES_ENV: PROFILE,
                INVOCATIONS_ENV: str(self.invocations),
            }
        full_env = {**clean, "DATABASE_URL": db_url, "LOG_FORMAT": "console", **own, **env}
        with self.output.open("w") as out:
            self.proc = subprocess.Popen(
                args, env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.output.read_text()

    def wait_ready(self) -> ServiceProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.command} exited early:\n{self.log()}")
            return http_ok(f"{self.url}/readyz")

        wait_for(ready, what=f"{self.command} to be ready")
        return self

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for p in started:
        p.kill()


def schema(url: str) -> tuple[list[int] | None, bool]:
    """(applied migration versions, or None without the table; whether ai_jobs exists)."""
    with psycopg.connect(url, autocommit=True) as conn:
        has = conn.execute(
            "SELECT to_regclass('ai_service_migrations') IS NOT NULL,"
            " to_regclass('ai_jobs') IS NOT NULL"
        ).fetchone()
        assert has is not None
        versions = None
        if has[0]:
            rows = conn.execute("SELECT version FROM ai_service_migrations ORDER BY version")
            versions = [int(r[0]) for r in rows]
    return versions, bool(has[1])


@pytest.mark.parametrize("command", ["api", "worker"])
def test_by_default_a_process_migrates_an_empty_database_before_it_is_ready(
    command: str, empty_db_url: str, tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    assert schema(empty_db_url) == (None, False)
    p = ServiceProcess(command, empty_db_url, tmp_path)  # MIGRATE_ON_START unset
    processes.append(p)
    p.wait_ready()
    assert schema(empty_db_url) == ([m.version for m in load_migrations()], True), p.log()
    # and it works on that schema
    if command == "api":
        r = httpx.post(
            f"{p.url}/api/v1/jobs",
            json={"owner_service": "e2e", "task_type": "test", "model_profile": PROFILE},
            timeout=30,
        )
        assert r.status_code == 201, r.text
    else:
        with psycopg.connect(empty_db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO ai_jobs (id, owner_service, task_type, model_profile)"
                " VALUES (gen_random_uuid(), 'e2e', 'test', %s)",
                (PROFILE,),
            )
        wait_for(lambda: read_invocations(p.invocations), what="the worker to run the job")
    assert p.stop() == 0, p.log()


@pytest.mark.parametrize("command", ["api", "worker", "dev"])
def test_with_migrate_on_start_false_a_process_refuses_an_unmigrated_database(
    command: str, empty_db_url: str, tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    """Migrating is the migrate Job's work, not the process's; but a process that started on
    a schema lacking migrations would report ready and fail every statement. It says so in
    one line and exits 1, leaving the database alone."""
    p = ServiceProcess(command, empty_db_url, tmp_path, MIGRATE_ON_START="false")
    processes.append(p)
    assert p.proc.wait(timeout=60) == 1, p.log()
    assert "lacks migrations 0001_jobs" in p.log() and "ai-service migrate" in p.log()
    assert "Traceback" not in p.log()
    assert schema(empty_db_url) == (None, False)
