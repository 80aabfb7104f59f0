"""Start and stop real ``ai-service worker`` processes for the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.config import FIELDS
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One ``ai-service worker --profile PROFILE`` subprocess, ready (idle) on return."""

    def __init__(self, url: str, profile: str, handlers: str, **env: str) -> None:
        self.port = free_port()
        base = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
        base |= {
            "DATABASE_URL": url,
            "MIGRATE_ON_START": "false",
            "WORKER_HTTP_HOST": "127.0.0.1",
            "WORKER_HTTP_PORT": str(self.port),
            "LOG_LEVEL": "warning",
            "AI_SERVICE_EXTRA_HANDLERS": handlers,
            "OTEL_SDK_DISABLED": "true",
        }
        base |= env
        self.profile = profile
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "--profile", profile], env=base, cwd=ROOT
        )
        self.pid = self.proc.pid
        self._wait_ready()

    def status(self) -> dict[str, object]:
        r = httpx.get(f"http://127.0.0.1:{self.port}/worker/status", timeout=5)
        data: dict[str, object] = r.json()
        return data

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the worker exited with {self.proc.returncode}")
            try:
                status = httpx.get(f"http://127.0.0.1:{self.port}/worker/status", timeout=2).json()
                if status["profiles"][self.profile]["state"] == "idle" and status["listener"][
                    "state"
                ] in ("connected", "disabled"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.proc.kill()
        raise SystemExit("the worker did not become ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
