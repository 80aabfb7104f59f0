"""How long ``make run`` takes to serve: ``ai-service dev`` from launch to ``/readyz`` 200.

Cold = an empty data directory (initdb of the embedded PostgreSQL, migrations); warm = the same
directory again (the data is reused). Each start is stopped with SIGINT, as Ctrl-C would, and
must exit 0 and leave no PostgreSQL process behind. The venv install that ``make run`` does on a
fresh clone is not included (it depends on the package cache, not on us).

Run alone: ``python -m bench.startup [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.common import summary, table, write_result
from service.config import FIELDS
from tests.helpers import free_port


def _postgres_under(data: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and any(str(data) in part for part in cmd):
            found.append(proc.pid)
    return found


def one_start(data: Path) -> float:
    port, worker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    env |= {"EMBEDDED_PG_DATA": str(data), "HTTP_PORT": str(port),
            "WORKER_HTTP_PORT": str(worker_port), "HTTP_HOST": "127.0.0.1"}  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "service", "dev"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ai-service dev exited with {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 120:
                raise RuntimeError("not ready within 120 s")
            time.sleep(0.02)
        ready = time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    if code != 0:
        raise RuntimeError(f"ai-service dev exited with {code} after SIGINT")
    if left := _postgres_under(data):
        raise RuntimeError(f"postgres left running after Ctrl-C: {left}")
    return ready * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    cold, warm = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="aisvc-startup-") as tmp:
            data = Path(tmp) / "pgdata"
            cold.append(one_start(data))
            warm.append(one_start(data))
    starts = (("cold (empty data dir)", cold), ("warm (data reused)", warm))
    rows = [[name, len(v), *(f"{summary(v)[k]:.0f}" for k in ("p50", "max"))] for name, v in starts]
    print(table("make run: ai-service dev → /readyz 200 (ms)", ["start", "n", "p50", "max"], rows))
    path = write_result(
        "startup_quick" if args.quick else "startup",
        {"cold_ms": cold, "warm_ms": warm, "cold": summary(cold), "warm": summary(warm)},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
