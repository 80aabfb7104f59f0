"""`ai-service api` as a process: a port already taken ends it with the reason in one line and
exit code 1, not a ~110-line traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from service.config import FIELDS


def test_a_taken_port_ends_the_api_with_one_clear_line(db_url: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {
            **clean,
            "DATABASE_URL": db_url,
            "MIGRATE_ON_START": "false",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port),
        }
        done = subprocess.run(
            [sys.executable, "-m", "service", "api"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "address already in use" in out.lower(), out
    assert "api could not start" in out, out
    assert "Traceback" not in out, out
