"""``ai-service infra-sidecar`` as a real process, reading the simulator's vLLM ``/metrics``:
the flags are those of deploy/ai-server/docker-compose.yml, vLLM figures are parsed, and a
host without NVML or a Docker socket reports them unavailable, not as errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from service.config import FIELDS
from service.simulator import serve_simulator
from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.slow


async def test_sidecar_process_reports_simulator_metrics(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    log = tmp_path / "sidecar.log"
    async with (
        serve_simulator(latency_ms=1.0, per_token_ms=0.0) as sim,
        httpx.AsyncClient(timeout=30) as client,
    ):
        for _ in range(3):
            r = await client.post(
                f"{sim.url}/v1/chat/completions",
                json={"model": "qwen2.5-14b", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 200
        with log.open("w") as out:
            proc = await anyio.open_process(
                [sys.executable, "-m", "service", "infra-sidecar", "--host=127.0.0.1",
                 f"--port={port}", f"--vllm=qwen2.5-14b={sim.url}/metrics",
                 f"--vllm=voxtral-small=http://127.0.0.1:{free_port()}/metrics",
                 f"--docker-socket={tmp_path / 'docker.sock'}"],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            with anyio.fail_after(60):
                while True:
                    assert proc.returncode is None, log.read_text()
                    try:
                        if (await client.get(f"{base}/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await anyio.sleep(0.05)
            r = await client.get(f"{base}/infra/status")
        finally:
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await proc.wait()
    assert proc.returncode == 0, log.read_text()
    assert r.status_code == 200
    body = r.json()
    assert body["gpus"]["available"] is False and body["gpus"]["reason"]
    assert body["containers"]["available"] is False
    assert "no Docker socket" in body["containers"]["reason"]
    qwen, voxtral = body["vllm"]
    assert qwen["name"] == "qwen2.5-14b" and qwen["reachable"] is True
    assert qwen["requests_running"] == 0 and qwen["requests_waiting"] == 0
    assert qwen["kv_cache_usage"] == 0
    assert qwen["e2e_request_latency"]["count"] == 3
    assert qwen["time_to_first_token"]["count"] == 3
    assert qwen["e2e_request_latency"]["p50_s"] is not None
    assert voxtral["name"] == "voxtral-small" and voxtral["reachable"] is False
    assert voxtral["error"]
