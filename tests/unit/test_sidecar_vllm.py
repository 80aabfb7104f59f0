"""The sidecar's reading of vLLM's Prometheus metrics (exposition text as vLLM serves it)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.sidecar.gpu import read_gpus
from service.sidecar.vllm import _quantile, read_vllm, summarise
from tests.helpers import lifespan, serve_asgi

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen2.5-14b"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen2.5-14b"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen2.5-14b"} 0.42
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="qwen2.5-14b"} 50.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="qwen2.5-14b"} 90.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="qwen2.5-14b"} 100.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="qwen2.5-14b"} 100.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="qwen2.5-14b"} 100.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="qwen2.5-14b"} 15.0
# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0",model_name="qwen2.5-14b"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="qwen2.5-14b"} 0.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="qwen2.5-14b"} 0.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="qwen2.5-14b"} 0.0
"""


def test_summarise_reads_gauges_and_histograms() -> None:
    out = summarise(VLLM_TEXT)
    assert out["requests_running"] == 12.0
    assert out["requests_waiting"] == 3.0
    assert out["kv_cache_usage"] == pytest.approx(0.42)
    ttft = out["time_to_first_token"]
    assert ttft["count"] == 100.0
    assert ttft["mean_s"] == pytest.approx(0.15)
    assert ttft["p50_s"] == pytest.approx(0.1)  # rank 50 falls exactly on the first bucket
    assert ttft["p95_s"] == pytest.approx(0.75)  # halfway through (0.5, 1.0]
    assert out["e2e_request_latency"] == {
        "count": 0.0,
        "mean_s": None,
        "p50_s": None,
        "p95_s": None,
    }


def test_a_family_written_in_pieces_adds_up() -> None:
    """A page that writes one model's metrics after another's repeats each name further
    down (untyped there): the later piece replaced the earlier, so two models' running
    requests read as the second's alone and its histograms were lost."""
    voxtral = VLLM_TEXT.replace("qwen2.5-14b", "voxtral").replace(" 12.0", " 2.0")
    second = "\n".join(line for line in voxtral.splitlines() if not line.startswith("#"))
    out = summarise(VLLM_TEXT + second + "\n")
    assert out["requests_running"] == 14.0 and out["requests_waiting"] == 6.0
    assert out["kv_cache_usage"] == pytest.approx(0.42)  # a mean of fractions
    assert out["time_to_first_token"]["count"] == 200.0


def test_the_simulators_page_keeps_each_family_together() -> None:
    from service.simulator.metrics import Exposition

    page = Exposition()
    for model in ("a", "b"):
        page.gauge("vllm:num_requests_running", "Running.", {"model_name": model}, 1.0)
        page.gauge("vllm:num_requests_waiting", "Waiting.", {"model_name": model}, 0.0)
    lines = page.render().splitlines()
    assert lines.count("# TYPE vllm:num_requests_running gauge") == 1
    running = [i for i, line in enumerate(lines) if line.startswith("vllm:num_requests_running")]
    assert running == [running[0], running[0] + 1]  # together, under their TYPE
    assert summarise(page.render())["requests_running"] == 2.0


def test_quantile_in_the_inf_bucket_reports_the_last_finite_bound() -> None:
    assert _quantile(0.99, [(1.0, 10.0), (float("inf"), 20.0)]) == 1.0


def test_gpu_reading_without_nvidia_driver_is_unavailable_not_an_error() -> None:
    out = read_gpus()
    assert set(out) >= {"available", "devices"}
    if not out["available"]:  # this machine has no GPU; a lent GPU host would report devices
        assert out["reason"]
        assert out["devices"] == []


async def test_a_malformed_metrics_page_is_an_error_entry_not_a_crash() -> None:
    """A histogram bucket without ``le`` raised KeyError out of ``read_vllm``: /infra/status
    answered 500 and hid the GPU and container status with it."""
    page = (
        "# TYPE vllm:e2e_request_latency_seconds histogram\n"
        'vllm:e2e_request_latency_seconds_bucket{model_name="m"} 1.0\n'
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": page.encode()})

    async with serve_asgi(app) as url, httpx.AsyncClient() as client:
        out = await read_vllm("llm", f"{url}/metrics", client)
    assert out["reachable"] is True and "without an le label" in out["error"]
