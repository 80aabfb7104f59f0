"""Print ``observability/alerts.yml`` as a Prometheus Operator ``PrometheusRule``.

Why a script: the rules live in one file that the local stack's Prometheus loads as is; a
cluster running the Prometheus Operator wants the same groups inside a custom resource, and a
hand-made copy would drift from the file the tests check.

    .venv/bin/python deploy/tools/prometheusrule.py [--namespace ai-service] \\
        [--label release=prometheus] > prometheusrule.yaml

``--label`` (repeatable) adds the labels your Prometheus's ``ruleSelector`` matches.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

ALERTS = Path(__file__).resolve().parents[2] / "observability" / "alerts.yml"


def prometheus_rule(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "ai-service",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "ai-service", **labels},
        },
        "spec": {"groups": groups},
    }


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="ai-service")
    parser.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rule = prometheus_rule(args.namespace, dict(args.label))
    print(yaml.safe_dump(rule, sort_keys=False, width=100), end="")


if __name__ == "__main__":
    main()
