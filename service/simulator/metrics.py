"""Prometheus text exposition with vLLM's metric names, written out by hand.

Why by hand: the simulator only *produces* a handful of series, and the format (0.0.4) is a
few lines per sample; pulling in a client library for that is not worth a dependency. The
names, labels and bucket bounds follow vLLM so dashboards and the infra sidecar read the
simulator exactly like a real server.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                   50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus expects them."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self) -> list[tuple[str, str, float]]:
        """``(suffix, le, value)`` rows, buckets cumulative, ending with ``+Inf``."""
        out: list[tuple[str, str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append(("_bucket", repr(float(bound)), float(running)))
        out.append(("_bucket", "+Inf", float(self.count)))
        return out


def _labels(labels: Mapping[str, str]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    inner = ",".join(f'{k}="{esc(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _num(v: float) -> str:
    return repr(float(v))


class Exposition:
    """Collects metric families and renders them in the text format, each family's samples
    together under its HELP and TYPE (as vLLM writes them): two models' samples written one
    model after the other made the second model's lines families of their own, untyped, with
    the same names, which a parser took for duplicates."""

    def __init__(self) -> None:
        self._families: dict[str, list[str]] = {}

    def _family(self, name: str, kind: str, help_text: str) -> list[str]:
        lines = self._families.get(name)
        if lines is None:
            lines = self._families[name] = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        return lines

    def gauge(self, name: str, help_text: str, labels: Mapping[str, str], value: float) -> None:
        self._family(name, "gauge", help_text).append(f"{name}{_labels(labels)} {_num(value)}")

    def counter(self, name: str, help_text: str, labels: Mapping[str, str], value: float) -> None:
        self._family(name, "counter", help_text).append(f"{name}{_labels(labels)} {_num(value)}")

    def histogram(
        self, name: str, help_text: str, labels: Mapping[str, str], hist: Histogram
    ) -> None:
        lines = self._family(name, "histogram", help_text)
        for suffix, le, value in hist.samples():
            lines.append(f"{name}{suffix}{_labels({**labels, 'le': le})} {_num(value)}")
        lines.append(f"{name}_sum{_labels(labels)} {_num(hist.sum)}")
        lines.append(f"{name}_count{_labels(labels)} {_num(hist.count)}")

    def render(self) -> str:
        return "\n".join(line for lines in self._families.values() for line in lines) + "\n"
