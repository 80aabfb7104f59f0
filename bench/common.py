"""Shared bench plumbing: a PostgreSQL to measure on, percentiles, tables and JSON output.

Benchmarks run on the embedded PostgreSQL with durable stock settings (fsync on), unless
``BENCH_DATABASE_URL`` names another server; every figure is printed next to the baseline
measured in the same run, and written to ``bench/results/<name>.json`` with the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg

from service.db.embedded import EmbeddedPostgres
from service.db.migrate import migrate

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) — no interpolation between samples."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else float("nan"),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
    }


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header]] + [
        [f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload: dict[str, Any] = {
        "benchmark": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    payload |= {"machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def server_info(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', "
            "'synchronous_commit', 'fsync', 'max_connections', 'work_mem', 'jit', "
            "'autovacuum', 'autovacuum_naptime', 'autovacuum_vacuum_scale_factor', "
            "'autovacuum_vacuum_insert_scale_factor', 'autovacuum_analyze_scale_factor')"
        ).fetchall()
    return {"server_version": version[0] if version else "?", "settings": dict(settings)}


@contextlib.contextmanager
def bench_database(*, migrated: bool = True, commit_timestamps: bool = False) -> Iterator[str]:
    """A fresh database: on BENCH_DATABASE_URL's server, else on a private embedded server
    (with ``track_commit_timestamp`` on when ``commit_timestamps``: see ``commit_times``)."""
    external = os.environ.get("BENCH_DATABASE_URL")
    server: EmbeddedPostgres | None = None
    tmp = None
    if external:
        admin = external
    else:
        tmp = tempfile.TemporaryDirectory(prefix="aisvc-bench-")
        settings = {"track_commit_timestamp": "on"} if commit_timestamps else {}
        server = EmbeddedPostgres(Path(tmp.name) / "data", settings=settings)
        admin = server.start()
    name = f"bench_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    url = psycopg.conninfo.make_conninfo(admin, dbname=name)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        if server is not None:
            server.close()
        if tmp is not None:
            tmp.cleanup()


# A statement's transaction id, as text; with ``track_commit_timestamp`` on, ``commit_times``
# turns it into the wall-clock time of the commit (CLOCK_REALTIME, like ``time.time()``).
XID = b"pg_current_xact_id()::text"


def commit_times(url: str, xids: Sequence[str]) -> list[float] | None:
    """Commit times (``time.time()`` seconds) of ``xids``; None when the server does not keep
    them (``track_commit_timestamp`` off, e.g. on a BENCH_DATABASE_URL server)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute(b"SHOW track_commit_timestamp").fetchone() != ("on",):
            return None
        rows = conn.execute(
            b"SELECT extract(epoch FROM pg_xact_commit_timestamp("
            b"  (x::numeric %% 4294967296)::text::xid)) FROM unnest(%s::text[]) WITH ORDINALITY"
            b" AS u(x, i) ORDER BY i",
            (list(xids),),
        ).fetchall()
    return [float(r[0]) for r in rows]


ROOT = Path(__file__).resolve().parent.parent


def spawn_service(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m service <args>`` from the repository, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_http(url: str, proc: subprocess.Popen[bytes], ok: Any = None, timeout: float = 60) -> Any:
    """Poll ``url`` until it answers 200 (and ``ok(json)`` holds, when given); fail at once if
    ``proc`` — the process that should serve it — exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200 and (ok is None or ok(r.json())):
                return r
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{url} did not come up within {timeout:g}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM (a graceful drain, as Kubernetes would), then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
