"""A port already taken ends `ai-service api`, `worker` and `dev` with one line naming the
setting and exit code 2, before anything else starts. uvicorn, left to bind it, logged the
error and called ``sys.exit`` inside the task group: in `dev` the event loop's shutdown then
hung on the database pool's tasks with the embedded PostgreSQL still running (2 starts in 10
with both ports taken), and a SIGTERM left that PostgreSQL behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from service.config import FIELDS
from tests.helpers import free_port

pytestmark = pytest.mark.slow


def _postgres_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(data_dir) in " ".join(
            proc.info["cmdline"] or []
        ):
            found.append(proc)
    return found


@pytest.mark.parametrize(
    ("command", "taken_setting"),
    [
        ("api", "HTTP_PORT"),
        ("worker", "WORKER_HTTP_PORT"),
        ("dev", "HTTP_PORT"),
        ("dev", "WORKER_HTTP_PORT"),
    ],
)
def test_a_taken_port_ends_the_process_with_one_clear_line(
    db_url: str, tmp_path: Path, command: str, taken_setting: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    data_dir = tmp_path / "pgdata"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {
            **clean,
            "MIGRATE_ON_START": "false",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(free_port()),
            "WORKER_HTTP_HOST": "127.0.0.1",
            "WORKER_HTTP_PORT": str(free_port()),
            taken_setting: str(port),
        }
        if command == "dev":
            env["EMBEDDED_PG_DATA"] = str(data_dir)  # no DATABASE_URL: the embedded server
        else:
            env["DATABASE_URL"] = db_url
        if command == "worker":  # a profile to serve: without one the worker stops before binding
            env["LLM_BASE_URL"] = "http://127.0.0.1:9/v1"
        done = subprocess.run(
            [sys.executable, "-m", "service", command],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert f"cannot listen on 127.0.0.1:{port}" in out, out
    assert taken_setting in out and "address already in use" in out.lower(), out
    assert "Traceback" not in out, out
    if command == "dev":  # checked before PostgreSQL is initialised or started
        assert not data_dir.exists(), out
        assert _postgres_processes(data_dir) == [], out
