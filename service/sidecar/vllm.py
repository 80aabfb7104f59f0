"""Live metrics of local vLLM servers, read from their Prometheus ``/metrics`` with
prometheus-client's parser (a maintained parser, not regexes), summarised for people:
running/waiting requests, KV-cache usage, and time-to-first-token / end-to-end latency
(count, mean, and p50/p95 estimated from the histogram buckets as Prometheus does).

Each read is bounded (``READ_DEADLINE_S`` in all, ``MAX_METRICS_BYTES``, uncompressed only)
and parsed off the event loop, so a slow or huge page costs that entry, not the whole status;
URLs and errors are shown without credentials (a ``user:password@`` in a metrics URL)."""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.to_thread
import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.providers.bounded import send_bounded
from service.providers.scrub import Scrubber
from service.providers.status import SIMULATED_HEADER
from service.providers.urls import redact_url
from service.sidecar import SOURCE_DEADLINE_S

READ_DEADLINE_S = SOURCE_DEADLINE_S  # (a name of its own: tests shorten it)
MAX_METRICS_BYTES = 8 * 1024 * 1024  # vLLM's page is tens of kilobytes

GAUGES = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # name used by vLLM before 0.10
}
# Fractions per engine (data parallelism: one series each): their mean, not their sum.
AVERAGED = frozenset({"kv_cache_usage"})
LEGACY = frozenset({"vllm:gpu_cache_usage_perc"})  # ignored where the new name is served
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
    """The figures of every model on the page together. A family may come in pieces (the
    same name again further down, as a page that writes one model's metrics after another's
    does): the pieces add up, rather than the last replacing the others."""
    gauges: dict[str, list[float]] = {}
    histograms: dict[str, tuple[dict[float, float], list[float]]] = {}  # buckets, [sum, count]
    families = list(text_string_to_metric_families(text))
    served = {f.name for f in families}
    for family in families:
        # The parser drops the `_total`-style suffixes for counters only; gauges keep names.
        if family.name in GAUGES:
            if family.name in LEGACY and "vllm:kv_cache_usage_perc" in served:
                continue
            gauges.setdefault(GAUGES[family.name], []).extend(s.value for s in family.samples)
        elif (name := _histogram_of(family.name)) is not None:
            buckets, totals = histograms.setdefault(HISTOGRAMS[name], ({}, [0.0, 0.0]))
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    if "le" not in s.labels:  # malformed: ``float(...)`` below raises ValueError
                        raise ValueError(f"{s.name} has a bucket without an le label")
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    totals[0] += s.value
                elif s.name.endswith("_count"):
                    totals[1] += s.value
    out: dict[str, Any] = {}
    for key, values in gauges.items():
        if key in AVERAGED:
            out[key] = sum(values) / len(values) if values else None
        else:
            out[key] = sum(values)
    for key, (buckets, (total, count)) in histograms.items():
        ordered = sorted(buckets.items())
        out[key] = {
            "count": count,
            "mean_s": (total / count) if count else None,
            "p50_s": _quantile(0.5, ordered),
            "p95_s": _quantile(0.95, ordered),
        }
    return out


def _histogram_of(family: str) -> str | None:
    """The histogram a family belongs to: its own name, or (a piece without its TYPE line,
    which the parser reads as untyped) that name with ``_bucket``/``_sum``/``_count``."""
    if family in HISTOGRAMS:
        return family
    base, _, suffix = family.rpartition("_")
    return base if suffix in ("bucket", "sum", "count") and base in HISTOGRAMS else None


async def read_vllm(name: str, metrics_url: str, client: httpx.AsyncClient) -> dict[str, Any]:
    shown, scrub = redact_url(metrics_url), Scrubber(metrics_url)
    try:
        with anyio.fail_after(READ_DEADLINE_S):
            resp = await send_bounded(client, "GET", metrics_url, limit=MAX_METRICS_BYTES)
            resp.raise_for_status()
    except (httpx.HTTPError, TimeoutError) as exc:
        error = scrub(str(exc)) or f"{type(exc).__name__} (no answer within {READ_DEADLINE_S:g}s)"
        return {"name": name, "url": shown, "reachable": False, "error": error}
    try:
        metrics = await anyio.to_thread.run_sync(summarise, resp.text)
    except ValueError as exc:
        error = f"bad metrics: {scrub(str(exc))}"
        return {"name": name, "url": shown, "reachable": True, "error": error}
    if resp.headers.get(SIMULATED_HEADER) == "true":  # the simulator: no GPU behind it
        metrics["simulated"] = True
    return {"name": name, "url": shown, "reachable": True, **metrics}
