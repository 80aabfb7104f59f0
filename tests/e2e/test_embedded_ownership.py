"""The embedded server's data directory under a second starter and after crashes: a server
another live process runs is not a leftover to stop; a stale ``postmaster.pid`` whose PID now
belongs to an unrelated process is not a server. Real PostgreSQL, real processes."""

from __future__ import annotations

import os
import signal
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


def test_a_starter_in_the_window_before_the_owner_file_is_written_is_refused(
    data_dir: Path,
) -> None:
    """Two ``make run`` started together: the in-use check reads the owner file, which the
    first had not written yet, so the second took the first's server for a leftover and
    stopped it. The directory is locked for the starter's life now (the kernel drops the
    lock however the process ends)."""
    first = EmbeddedPostgres(data_dir, settings=FAST_SETTINGS)
    url = first.start()
    try:
        (data_dir / OWNER_FILE).unlink()  # as in that window
        second = subprocess.run(
            [sys.executable, "-c", START, str(data_dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert second.returncode == 3, second.stdout + second.stderr
        assert "is in use by another process" in second.stdout
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        first.close()
    again = EmbeddedPostgres(data_dir, settings=FAST_SETTINGS)  # released by close()
    again.start()
    again.close()


INTERRUPTED_INITDB = (
    "import os, shutil, sys, time\n"
    "from pathlib import Path\n"
    "from service.db import embedded\n"
    "real = embedded.EmbeddedPostgres._run\n"
    "def run(self, exe, *args, **kwargs):\n"
    "    out = real(self, exe, *args, **kwargs)\n"
    "    if exe == 'initdb':  # as if cut short after PG_VERSION: part of the cluster missing\n"
    "        target = Path(args[args.index('-D') + 1])\n"
    "        shutil.rmtree(target / 'global')\n"
    "        print('initdb under way', flush=True)\n"
    "        time.sleep(600)\n"
    "    return out\n"
    "embedded.EmbeddedPostgres._run = run\n"
    "embedded.EmbeddedPostgres(sys.argv[1]).init()\n"
)


def test_a_first_start_interrupted_during_initdb_leaves_no_cluster_that_is_not_one(
    data_dir: Path,
) -> None:
    """initdb writes PG_VERSION first: Ctrl-C during the first ``make run`` left a directory
    taken for a cluster ("reusing data") that every later start failed on. initdb now runs
    beside the directory and is renamed into place once complete."""
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_INITDB, str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "initdb under way"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (data_dir / "PG_VERSION").exists()
    server = EmbeddedPostgres(data_dir, settings=FAST_SETTINGS)
    assert not server.initialised
    try:
        with psycopg.connect(server.start(), connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.close()
    assert [p.name for p in data_dir.parent.iterdir() if "initdb" in p.name] == []
