"""Live metrics of local vLLM servers, read from their Prometheus ``/metrics`` with
prometheus-client's parser (a maintained parser, not regexes), summarised for people:
running/waiting requests, KV-cache usage, and time-to-first-token / end-to-end latency
(count, mean, and p50/p95 estimated from the histogram buckets as Prometheus does)."""

from __future__ import annotations

import math
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

GAUGES = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # name used by vLLM before 0.10
}
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": "time_to_first_token",
    "vllm:e2e_request_latency_seconds": "e2e_request_latency",
}


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """histogram_quantile over cumulative (upper_bound, count) buckets, linear within one."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return None


def summarise(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        # The parser drops the `_total`-style suffixes for counters only; gauges keep names.
        if family.name in GAUGES:
            out[GAUGES[family.name]] = sum(s.value for s in family.samples)
        elif family.name in HISTOGRAMS:
            buckets: dict[float, float] = {}
            total = count = 0.0
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    if "le" not in s.labels:  # malformed: ``float(...)`` below raises ValueError
                        raise ValueError(f"{s.name} has a bucket without an le label")
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    total += s.value
                elif s.name.endswith("_count"):
                    count += s.value
            ordered = sorted(buckets.items())
            out[HISTOGRAMS[family.name]] = {
                "count": count,
                "mean_s": (total / count) if count else None,
                "p50_s": _quantile(0.5, ordered),
                "p95_s": _quantile(0.95, ordered),
            }
    return out


async def read_vllm(name: str, metrics_url: str, client: httpx.AsyncClient) -> dict[str, Any]:
    try:
        resp = await client.get(metrics_url)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        return {"name": name, "url": metrics_url, "reachable": False, "error": str(exc)}
    try:
        metrics = summarise(resp.text)
    except ValueError as exc:
        return {"name": name, "url": metrics_url, "reachable": True, "error": f"bad metrics: {exc}"}
    return {"name": name, "url": metrics_url, "reachable": True, **metrics}
