"""The embedded server's data directory under a second starter and after crashes: a server
another live process runs is not a leftover to stop; a stale ``postmaster.pid`` whose PID now
belongs to an unrelated process is not a server. Real PostgreSQL, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service.db.embedded import FAST_SETTINGS, OWNER_FILE, EmbeddedPostgres

START = (
    "import sys; from service.db.embedded import EmbeddedPostgres, EmbeddedError\n"
    "try:\n"
    "    EmbeddedPostgres(sys.argv[1]).start()\n"
    "except EmbeddedError as exc:\n"
    "    print(exc); sys.exit(3)\n"
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path (see test_worker_processes): the server's system user must
    # be able to reach it when the tests run as root.
    with tempfile.TemporaryDirectory(prefix="aisvc-own-") as tmp:
        yield Path(tmp) / "pg"


def test_a_second_starter_does_not_stop_a_server_another_process_runs(data_dir: Path) -> None:
    """A second ``make run`` in the same directory used to stop the first one's server as a
    leftover; it now fails with a sentence saying so, and the first keeps working."""
    first = EmbeddedPostgres(data_dir, settings=FAST_SETTINGS)
    url = first.start()
    try:
        second = subprocess.run(
            [sys.executable, "-c", START, str(data_dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert second.returncode == 3, second.stdout + second.stderr
        assert f"is in use by another process (pid {os.getpid()}" in second.stdout
        refused = EmbeddedPostgres(data_dir)  # as `ai-service dev` does: start, then close
        refused.close()  # never started, so it must not stop the server it found
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        first.close()
    assert not (data_dir / OWNER_FILE).exists()


def test_a_stale_pid_file_naming_an_unrelated_live_process_is_ignored(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, settings=FAST_SETTINGS)
    server.start()
    server.stop()
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (data_dir / "postmaster.pid").write_text(f"{unrelated.pid}\n{data_dir}\n")
        assert server.running_pid() is None
        url = server.start()  # neither signals the process nor waits on it
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        server.close()
