"""`ai-service dev` (what `make run` starts): embedded PostgreSQL, health and readiness, data
reused on the next start, and no `postgres` process left behind after SIGTERM or Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from service.config import FIELDS
from tests.helpers import free_port, http_ok, wait_for

pytestmark = pytest.mark.slow


def _postgres_on(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(data_dir) in cmd:
            found.append(proc)
    return found


def _start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    env = {
        **clean,
        "EMBEDDED_PG_DATA": str(data_dir),
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "WORKER_HTTP_HOST": "127.0.0.1",
        "WORKER_HTTP_PORT": str(free_port()),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_until_ready_then_signal(data_dir: Path, sig: signal.Signals) -> str:
    port = free_port()
    proc = _start(data_dir, port)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz", proc), what="healthz")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/readyz", proc), what="readyz")
        assert _postgres_on(data_dir), "the embedded PostgreSQL should be running"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    return out


def test_dev_serves_reuses_data_and_leaves_no_postgres_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    first = _run_until_ready_then_signal(data_dir, signal.SIGTERM)
    assert "initialised and started" in first
    assert "applied migration 0001_jobs" in first
    assert wait_for(lambda: not _postgres_on(data_dir), what="postgres to exit", timeout=30)

    second = _run_until_ready_then_signal(data_dir, signal.SIGINT)
    assert "reusing data" in second
    assert "applied migration" not in second  # the schema survived: same data directory
    assert wait_for(lambda: not _postgres_on(data_dir), what="postgres to exit", timeout=30)
