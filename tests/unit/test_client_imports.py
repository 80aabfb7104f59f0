"""A domain service imports the Python client, not the server: ``import service.client``
must not load the database stack, the web framework or the telemetry SDK (it loaded psycopg,
the pool and the OpenTelemetry SDK through ``service.jobs``'s package import, ~0.5 s)."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_SIDE = ("psycopg", "psycopg_pool", "litestar", "uvicorn", "opentelemetry.sdk",
               "service.db", "service.jobs.repository", "service.config")  # fmt: skip


def test_importing_the_client_loads_no_server_side_module() -> None:
    code = (
        "import json, sys; import service.client; "
        f"print(json.dumps([m for m in {list(SERVER_SIDE)!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout) == []


def test_the_repository_is_still_importable_from_the_package() -> None:
    from service.jobs import JobRepository, new_id
    from service.jobs.repository import JobRepository as Direct

    assert JobRepository is Direct and callable(new_id)
