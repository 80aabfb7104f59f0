"""`ai-service dev` (what `make run` starts): embedded PostgreSQL, health and readiness, a chat
and a transcription job completed through the worker and the SIMULATED inference endpoint, data
reused on the next start, and no `postgres` process left behind after SIGTERM or Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.config import FIELDS
from tests.helpers import free_port, http_ok, reaped, wait_for, wav_base64

pytestmark = pytest.mark.slow


def _postgres_on(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(data_dir) in cmd:
            found.append(proc)
    return found


def _start(data_dir: Path, port: int, extra: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    env = {
        **clean,
        "EMBEDDED_PG_DATA": str(data_dir),
        "HTTP_PORT": str(port),
        "WORKER_HTTP_PORT": str(free_port()),
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_jobs(base: str) -> list[dict[str, Any]]:
    """A chat job and a transcription job through the dev stack's API → worker → simulator."""
    jobs = [
        ("llm_chat", "qwen2.5-14b", {"system": "Be brief.", "user": "Classify this text"}),
        ("transcription", "voxtral-small", {"audio_base64": wav_base64(2.0), "diarization": True}),
    ]
    done = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for task_type, profile, data in jobs:
            body = {"owner_service": "dev", "task_type": task_type, "model_profile": profile}
            r = client.post("/api/v1/jobs", json={**body, "input": data})
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]

            def finished(job_id: str = job_id) -> dict[str, Any] | None:
                job: dict[str, Any] = client.get(
                    f"/api/v1/jobs/{job_id}", params={"wait_seconds": 5}
                ).json()
                return job if job["status"] in ("completed", "failed", "cancelled") else None

            done.append(wait_for(finished, what=f"the {task_type} job to finish"))
    return done


def _run_until_ready_then_signal(
    data_dir: Path, sig: signal.Signals, *, jobs: bool = False, extra: dict[str, str] | None = None
) -> str:
    port = free_port()
    with reaped(_start(data_dir, port, extra or {})) as proc:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz", proc), what="healthz")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/readyz", proc), what="readyz")
        assert _postgres_on(data_dir), "the embedded PostgreSQL should be running"
        if jobs:
            chat, transcript = _run_jobs(f"http://127.0.0.1:{port}")
            assert chat["status"] == "completed", chat
            assert chat["result"]["content"] and chat["result"]["model"] == "qwen2.5-14b"
            assert transcript["status"] == "completed", transcript
            assert transcript["result"]["segments"]
            assert transcript["result"]["segments"][0]["speaker"] == "SPEAKER_00"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return out


def test_dev_serves_reuses_data_and_leaves_no_postgres_behind() -> None:
    # Not under tmp_path: another pytest session resets that tree to 0700, locking out the
    # server's system user when the tests run as root (tests/conftest.py, pg_admin_url).
    with tempfile.TemporaryDirectory(prefix="aisvc-dev-") as tmp:
        _serve_twice(Path(tmp) / "pgdata")


def _serve_twice(data_dir: Path) -> None:
    hosts = {"HTTP_HOST": "127.0.0.1", "WORKER_HTTP_HOST": "127.0.0.1"}
    first = _run_until_ready_then_signal(data_dir, signal.SIGTERM, jobs=True, extra=hosts)
    assert "initialised and started" in first
    assert "SIMULATED" in first  # make run says plainly that results are synthetic
    assert "applied migration 0001_jobs" in first
    assert wait_for(lambda: not _postgres_on(data_dir), what="postgres to exit", timeout=30)

    # No HTTP_HOST / WORKER_HTTP_HOST: dev listens on loopback, the metrics listener too
    metrics = free_port()
    second = _run_until_ready_then_signal(
        data_dir, signal.SIGINT, extra={"METRICS_PORT": str(metrics)}
    )
    assert f"Prometheus metrics on http://127.0.0.1:{metrics}/metrics" in second, second
    assert "reusing data" in second
    assert "applied migration" not in second  # the schema survived: same data directory
    assert wait_for(lambda: not _postgres_on(data_dir), what="postgres to exit", timeout=30)
    # a closed terminal (SIGHUP) killed the process on the spot and left postgres running
    third = _run_until_ready_then_signal(data_dir, signal.SIGHUP)
    assert "received SIGHUP: shutting down gracefully" in third, third
    assert wait_for(lambda: not _postgres_on(data_dir), what="postgres to exit", timeout=30)
