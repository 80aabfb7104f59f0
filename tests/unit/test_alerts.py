"""observability/alerts.yml: well-formed Prometheus rules that query only what the service
emits, with labels the metrics carry (a typo'd metric or label makes an alert that never
fires, which no one notices until the outage it was for)."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import yaml

from service.metrics import names
from tests.helpers import ROOT
from tests.unit.test_metrics_registry import metric_names

ALERTS = ROOT / "observability" / "alerts.yml"
_SELECTORS = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def labels_of(series: str) -> set[str]:
    """The labels a series of ours carries: its metric's attributes, dots as underscores."""
    for m in names.REGISTRY:
        if series in names.prometheus_series(m):
            return {a.replace(".", "_") for a in m.attributes}
    raise AssertionError(f"{series} is not emitted")


def test_every_alert_is_complete_and_queries_only_emitted_series_and_labels() -> None:
    found = rules()
    assert len(found) >= 5
    assert len({r["alert"] for r in found}) == len(found)
    for rule in found:
        name, expr = rule["alert"], " ".join(rule["expr"].split())
        assert re.fullmatch(r"AiService[A-Za-z]+", name)
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        series = metric_names(expr)
        assert series and series <= names.emitted_series(), (name, series)
        for metric, matchers in _SELECTORS.findall(expr):  # a matcher: that metric's label
            used = set(_MATCHER_LABEL.findall(matchers))
            assert used <= labels_of(metric), (name, metric, used - labels_of(metric))
        grouped = {x.strip() for text in _GROUPING.findall(expr) for x in text.split(",") if x}
        for s in series:  # a grouping label: every metric's
            assert grouped <= labels_of(s), (name, s, grouped - labels_of(s))


def test_prometheus_loads_the_rules_and_the_local_stack_mounts_them() -> None:
    prom = yaml.safe_load((ROOT / "observability" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    compose = yaml.safe_load((ROOT / "deploy" / "local" / "compose.yaml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "../../observability/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_prometheus_rule_carries_exactly_the_alert_file() -> None:
    """What a cluster with the Prometheus Operator loads is the file the tests above check."""
    script = ROOT / "deploy" / "tools" / "prometheusrule.py"
    out = subprocess.run(
        [sys.executable, str(script), "--namespace", "ops", "--label", "release=prometheus"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    rule = yaml.safe_load(out.stdout)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["namespace"] == "ops"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
