"""The metric registry against the real exporter, and every dashboard against the registry.

- Each registry entry, built and recorded on a private MeterProvider with the real
  ``PrometheusMetricReader``, appears under the Prometheus names ``prometheus_series`` derives
  (the names the dashboards are checked against), with its attributes as labels.
- Every metric name in every PromQL expression of ``observability/grafana/dashboards/*.json``
  is one the service emits (from the registry) or a vLLM metric the simulator actually exposes
  (its rendered ``/metrics``), which the infra sidecar also reads; nothing is copied by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import build_instruments, names
from service.sidecar.vllm import GAUGES, HISTOGRAMS
from service.simulator.gpu import Gpu
from service.simulator.metrics import Exposition

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "observability"
DASHBOARDS = sorted((OBS / "grafana" / "dashboards").glob("*.json"))


def _attrs(metric: names.Metric) -> dict[str, str]:
    return {a: "x" for a in metric.attributes}


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, as the real exporter writes them."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        instruments = build_instruments(
            provider.get_meter("test"), lambda m: [Observation(1, _attrs(m))]
        )
        for m in names.REGISTRY:
            inst = instruments[m.name]
            if m.kind == "counter":
                inst.add(1, _attrs(m))
            elif m.kind == "histogram":
                inst.record(1, _attrs(m))
        text = generate_latest(registry).decode()
    finally:
        provider.shutdown()
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def test_registry_names_are_what_the_prometheus_exporter_writes() -> None:
    samples = exported()
    for m in names.REGISTRY:
        for series in names.prometheus_series(m):
            assert series in samples, (m.name, series, sorted(samples))
            labels = {names.prometheus_label(a) for a in m.attributes}
            assert labels <= samples[series], (series, labels - samples[series])


def test_registry_names_are_unique_and_conventional() -> None:
    assert len({m.name for m in names.REGISTRY}) == len(names.REGISTRY)
    for m in names.REGISTRY:
        assert re.fullmatch(r"(ai_service|gen_ai)(\.[a-z_]+)+", m.name), m.name
        assert not m.name.endswith(("_total", ".total")), m.name
        assert m.description, m.name


# --- dashboards ---------------------------------------------------------------------------------


def vllm_series() -> frozenset[str]:
    """What the simulator's /metrics really exposes (vLLM's names), rendered, not listed."""
    gpu = Gpu(model="m", capacity=1, kv_cache_tokens=100)
    gpu.finish("stop")
    gpu.ttft.observe(0.1)
    out = Exposition()
    gpu.expose(out)
    return frozenset(
        s.name for f in text_string_to_metric_families(out.render()) for s in f.samples
    )


def external_series() -> frozenset[str]:
    """vLLM's metrics: what the simulator exposes plus what the infra sidecar reads."""
    sidecar = {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    return vllm_series() | set(GAUGES) | sidecar


_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names of a PromQL expression: identifiers that are not functions, keywords,
    labels (matchers and grouping clauses removed), durations or Grafana variables."""
    text = _VARIABLES.sub("1", _STRINGS.sub('""', expr))
    text = _RANGES.sub("", _GROUPING.sub("", _MATCHERS.sub("", text)))
    found = set()
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        found.add(name)
    return found


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model_profile) (rate(a_bucket{x="y(z)"}'
        "[$__rate_interval]))) / on (model_profile) group_left max(b) > bool 0 or vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b"}
    assert metric_names('sum(vllm:num_requests_running{model_name=~"$model"})') == {
        "vllm:num_requests_running"
    }


def panels(node: Any) -> Iterator[dict[str, Any]]:
    for p in node.get("panels", []):
        yield p
        yield from panels(p)


def expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    for p in panels(dashboard):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield t["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            text = query.get("query", "") if isinstance(query, dict) else query or ""
            yield re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", text.strip())


def test_there_are_dashboards() -> None:
    assert DASHBOARDS, "no dashboards under observability/grafana/dashboards"


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_queries_only_emitted_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    allowed = names.emitted_series() | external_series()
    used: set[str] = set()
    for expr in expressions(dashboard):
        found = metric_names(expr)
        assert found, f"{path.name}: no metric in {expr!r}"
        assert found <= allowed, f"{path.name}: {sorted(found - allowed)} in {expr!r}"
        used |= found
    assert used


def test_dashboards_cover_the_operator_questions() -> None:
    used = set()
    for path in DASHBOARDS:
        for expr in expressions(json.loads(path.read_text())):
            used |= metric_names(expr)
    want = {
        *names.prometheus_series(names.QUEUE_PENDING),
        *names.prometheus_series(names.QUEUE_OLDEST_AGE),
        names.prometheus_series(names.PICKUP_LATENCY)[0],  # _bucket: p50/p99
        *names.prometheus_series(names.JOBS_COMPLETED),
        *names.prometheus_series(names.JOBS_FAILED),
        *names.prometheus_series(names.JOBS_IN_FLIGHT),
        *names.prometheus_series(names.WORKER_CAPACITY),
        names.prometheus_series(names.GEN_AI_TOKENS)[1],  # _sum: tokens/s
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    }
    assert want <= used, sorted(want - used)


def test_datasources_provide_every_uid_the_dashboards_use() -> None:
    provided = set()
    for f in (OBS / "grafana" / "provisioning" / "datasources").glob("*.yaml"):
        provided |= {d["uid"] for d in yaml.safe_load(f.read_text())["datasources"]}
    for path in DASHBOARDS:
        text = path.read_text()
        for uid in re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"$]+)"', text):
            assert uid in provided, (path.name, uid)


def test_a_worker_that_is_not_running_reports_capacity_zero_not_nothing() -> None:
    """Its last export must say 0: a missing point leaves the collector showing the old
    capacity until the series expires (double capacity through every rolling restart)."""
    from service.metrics import Workers
    from service.worker.status import ProfileStats, WorkerStatus

    status = WorkerStatus("w", {"p": ProfileStats(capacity=4, in_flight=1)}, state="running")
    workers = Workers()
    workers.watch(status)
    seen = {
        m.name: [(o.value, dict(o.attributes or {})) for o in workers.observe(m)]
        for m in (names.WORKER_CAPACITY, names.JOBS_IN_FLIGHT)
    }
    assert seen[names.WORKER_CAPACITY.name] == [(4, {"model_profile": "p"})]
    for state in ("draining", "stopped"):
        status.state = state
        assert [o.value for o in workers.observe(names.WORKER_CAPACITY)] == [0]
        assert [o.value for o in workers.observe(names.JOBS_IN_FLIGHT)] == [1]
