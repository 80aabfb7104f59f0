"""Memory: resident set size of a real ``ai-service worker`` process at idle and under the
throughput run (no-op handler, ``WORKER_CLAIM_LIMIT=1000``, N jobs drained), target idle
< 120 MiB; and of a real ``ai-service api`` process while ten batches of 10,000 jobs (~9 MB
each, under ``MAX_REQUEST_BYTES``) arrive at once, against its pod's 512 MiB limit
(``deploy/k8s/base/api.yaml``): before the large-body gate it peaked at ~520 MiB.

RSS is sampled with psutil every 20 ms; the peak is also read from the kernel (``VmHWM`` in
``/proc/<pid>/status``), which sees spikes between samples. Run alone:
``python -m bench.memory [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from bench import noop, throughput
from bench.common import (
    bench_database,
    spawn_service,
    stop_process,
    table,
    wait_http,
    write_result,
)
from service.config import FIELDS
from tests.helpers import free_port

MIB = 1024 * 1024
TARGET_IDLE_MIB = 120.0


def _hwm(pid: int) -> float:
    """Peak RSS so far, MiB (Linux), or NaN."""
    path = Path(f"/proc/{pid}/status")
    if not path.exists():
        return float("nan")
    for line in path.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB
    return float("nan")


class Sampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0.0
        self.last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = self.proc.memory_info().rss / MIB
            except psutil.Error:
                return
            self.peak = max(self.peak, self.last)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


API_LIMIT_MIB = 512.0
BATCHES = 10


def api_under_batches(url: str, quick: bool) -> dict[str, Any]:
    """Peak RSS of an API process while ``BATCHES`` large batches arrive together."""
    n = 2_000 if quick else 10_000
    item = {"owner_ref": "r", "input": {"user": "x" * 860}}  # ~0.9 KB a job
    defaults = {"owner_service": "bench", "task_type": "llm_chat", "model_profile": "qwen2.5-14b"}
    body = json.dumps({"defaults": defaults, "jobs": [item] * n}).encode()
    clean = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    port = free_port()
    env = {**clean, "DATABASE_URL": url, "MIGRATE_ON_START": "false", "HTTP_HOST": "127.0.0.1",
           "HTTP_PORT": str(port), "LOG_LEVEL": "warning"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        api = spawn_service(["api"], env, Path(tmp) / "api.log")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/readyz", api)
            sampler = Sampler(api.pid)
            time.sleep(0.5)
            idle = sampler.last
            codes: list[int] = []

            def send() -> None:
                r = httpx.post(f"{base}/api/v1/jobs/batch", content=body, timeout=600,
                               headers={"content-type": "application/json"})  # fmt: skip
                codes.append(r.status_code)

            senders = [threading.Thread(target=send) for _ in range(BATCHES)]
            t0 = time.monotonic()
            for t in senders:
                t.start()
            for t in senders:
                t.join()
            took = time.monotonic() - t0
            time.sleep(0.5)
            sampler.stop()
            return {"batches": BATCHES, "jobs_per_batch": n, "body_bytes": len(body),
                    "codes": sorted(codes), "seconds": took, "idle_rss_mib": idle,
                    "peak_rss_mib": sampler.peak, "hwm_mib": _hwm(api.pid),
                    "after_rss_mib": sampler.last}  # fmt: skip
        finally:
            stop_process(api)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 10_000 if args.quick else 50_000
    idle_s = 1.0 if args.quick else 5.0
    out: dict[str, Any] = {"jobs": n, "claim_limit": int(throughput.CLAIM_LIMIT)}
    with bench_database() as url:
        (worker,) = throughput.start_workers(url, 1)
        try:
            sampler = Sampler(worker.pid)
            time.sleep(idle_s)
            out["idle_rss_mib"] = sampler.last
            out["idle_peak_rss_mib"] = sampler.peak
            out["idle_hwm_mib"] = _hwm(worker.pid)
            with psycopg.connect(url, autocommit=True) as conn:
                t0 = time.monotonic()
                conn.execute(throughput.INSERT,
                             {"task": noop.TASK, "profile": noop.PROFILE, "n": n})  # fmt: skip
                throughput.wait_done(conn)
                out["drain_s"] = time.monotonic() - t0
            time.sleep(0.5)
            out["load_peak_rss_mib"] = sampler.peak
            out["load_hwm_mib"] = _hwm(worker.pid)
            out["after_load_rss_mib"] = sampler.last
            sampler.stop()
        finally:
            worker.stop()
        api = out["api"] = api_under_batches(url, args.quick)
    rows = [
        ["idle", out["idle_rss_mib"], out["idle_hwm_mib"]],
        [f"drain of {n} jobs", out["load_peak_rss_mib"], out["load_hwm_mib"]],
        ["after the drain", out["after_load_rss_mib"], out["load_hwm_mib"]],
    ]
    print(table("worker process RSS, MiB", ["phase", "RSS (sampled peak)", "VmHWM"], rows))
    api_rows = [
        ["idle", api["idle_rss_mib"], ""],
        [f"{BATCHES} batches of {api['jobs_per_batch']:,} at once ({api['body_bytes']:,} B each)",
         api["peak_rss_mib"], api["hwm_mib"]],
        ["after them", api["after_rss_mib"], api["hwm_mib"]],
    ]  # fmt: skip
    print(table("API process RSS, MiB", ["phase", "RSS (sampled peak)", "VmHWM"], api_rows))
    print(f"answers {api['codes']}; API peak vs its pod's {API_LIMIT_MIB:.0f} MiB limit: "
          f"{api['hwm_mib'] / API_LIMIT_MIB:.0%}")  # fmt: skip
    ok = out["idle_hwm_mib"] < TARGET_IDLE_MIB
    print(f"target idle RSS < {TARGET_IDLE_MIB:.0f} MiB: {'PASS' if ok else 'FAIL'}")
    out |= {"target_idle_mib": TARGET_IDLE_MIB, "pass": ok}
    path = write_result("memory_quick" if args.quick else "memory", out)
    print(f"wrote {path}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
