"""The registry: every metric the service emits, declared once (name, kind, unit, meaning).

Why a table: the instruments are built from it, the Prometheus names the dashboards query are
derived from it (``prometheus_series``), and a test checks every dashboard expression against
it, so a renamed metric cannot silently leave a panel empty. Names follow the OpenTelemetry
semantic-convention style (``ai_service.jobs.created``; GenAI names exactly as specified);
the Prometheus form is what the OTel Prometheus exporter and the Collector produce: dots to
underscores, the unit as a suffix (``s`` → ``_seconds``, ``{job}`` annotations dropped) and
``_total`` on monotonic counters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["counter", "histogram", "observable_gauge", "observable_up_down_counter"]

# Seconds: from a NOTIFY-speed pickup (ms) to a job that waited an hour for a GPU.
WAIT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                       5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)  # fmt: skip
RUN_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
                      40.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)  # fmt: skip
# The GenAI semantic conventions' advised boundaries.
GEN_AI_DURATION_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12,
                                  10.24, 20.48, 40.96, 81.92)  # fmt: skip
GEN_AI_TOKEN_BUCKETS: Final = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576,
                               4194304, 16777216, 67108864)  # fmt: skip


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


_JOB = ("model_profile", "task_type")
_GEN_AI = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "server.address",
)

JOBS_CREATED = Metric(
    "ai_service.jobs.created",
    "counter",
    "{job}",
    "Jobs inserted by the API (idempotent repeats not counted).",
    _JOB,
)
JOBS_COMPLETED = Metric(
    "ai_service.jobs.completed", "counter", "{job}", "Jobs whose result was stored.", _JOB
)
JOBS_FAILED = Metric(
    "ai_service.jobs.failed",
    "counter",
    "{job}",
    "Failed attempts; outcome=retry went back to pending, final stays failed.",
    (*_JOB, "error_category", "outcome"),
)
JOBS_IN_FLIGHT = Metric(
    "ai_service.jobs.in_flight",
    "observable_up_down_counter",
    "{job}",
    "Jobs running in workers now (read from the workers' own counters at collection).",
    ("model_profile",),
)
WORKER_CAPACITY = Metric(
    "ai_service.worker.capacity",
    "observable_up_down_counter",
    "{job}",
    "Jobs running workers may hold at once (their WORKER_CLAIM_LIMIT[S]).",
    ("model_profile",),
)
PICKUP_LATENCY = Metric(
    "ai_service.jobs.pickup_latency",
    "histogram",
    "s",
    "From a job becoming due (insert, or end of its retry backoff) to its "
    "claim, on the database clock.",
    _JOB,
    WAIT_BUCKETS,
)
JOB_DURATION = Metric(
    "ai_service.jobs.duration",
    "histogram",
    "s",
    "Handler run time of one attempt; outcome completed|failed|stopped.",
    (*_JOB, "outcome"),
    RUN_BUCKETS,
)
QUEUE_PENDING = Metric(
    "ai_service.queue.pending",
    "observable_gauge",
    "{job}",
    "Pending jobs, due or scheduled later (sampled by the API).",
    ("model_profile",),
)
QUEUE_DUE = Metric(
    "ai_service.queue.due",
    "observable_gauge",
    "{job}",
    "Pending jobs that are due now (sampled by the API).",
    ("model_profile",),
)
QUEUE_OLDEST_AGE = Metric(
    "ai_service.queue.oldest_pending_age",
    "observable_gauge",
    "s",
    "How long the oldest due pending job has waited (sampled by the API).",
    ("model_profile",),
)
LISTENER_RECONNECTS = Metric(
    "ai_service.listener.reconnects",
    "counter",
    "{reconnect}",
    "LISTEN connections reopened after a loss.",
)
LEASES_RENEWED = Metric(
    "ai_service.leases.renewed", "counter", "{lease}", "Leases extended by the lease keeper."
)
LEASES_LOST = Metric(
    "ai_service.leases.lost",
    "counter",
    "{lease}",
    "Running jobs whose lease this worker no longer held (cancelled here).",
    ("model_profile",),
)
LEASES_REAPED = Metric(
    "ai_service.leases.reaped",
    "counter",
    "{lease}",
    "Expired leases returned to pending (outcome=requeued) or failed.",
    ("outcome",),
)
GEN_AI_TOKENS = Metric(
    "gen_ai.client.token.usage",
    "histogram",
    "{token}",
    "Tokens per inference call, by gen_ai.token.type (input|output).",
    (*_GEN_AI, "gen_ai.token.type"),
    GEN_AI_TOKEN_BUCKETS,
)
WORKERS_PAUSED = Metric(
    "ai_service.worker.paused",
    "observable_up_down_counter",
    "{worker}",
    "Running worker processes holding back claims for the profile because its inference "
    "server fails (the provider breaker is not closed: paused, checking, or one probe job at "
    "a time); while they pause, no job fails, so failure rates fall.",
    ("model_profile",),
)
GEN_AI_DURATION = Metric(
    "gen_ai.client.operation.duration",
    "histogram",
    "s",
    "Duration of one inference call, failures (error.type) included.",
    (*_GEN_AI, "error.type"),
    GEN_AI_DURATION_BUCKETS,
)

REGISTRY: Final[tuple[Metric, ...]] = (
    JOBS_CREATED, JOBS_COMPLETED, JOBS_FAILED, JOBS_IN_FLIGHT, WORKER_CAPACITY, PICKUP_LATENCY,
    JOB_DURATION, QUEUE_PENDING, QUEUE_DUE, QUEUE_OLDEST_AGE, LISTENER_RECONNECTS,
    LEASES_RENEWED, LEASES_LOST, LEASES_REAPED, GEN_AI_TOKENS, GEN_AI_DURATION, WORKERS_PAUSED,
)  # fmt: skip

_UNITS: Final = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "", "%": "percent"}


def prometheus_name(metric: Metric) -> str:
    """The family name in Prometheus (without ``_total``/``_bucket`` sample suffixes)."""
    base = re.sub(r"[^A-Za-z0-9:]+", "_", metric.name)
    unit = re.sub(r"\{.*\}", "", metric.unit)
    suffix = _UNITS.get(unit, unit)
    return f"{base}_{suffix}" if suffix and not base.endswith("_" + suffix) else base


def prometheus_label(attribute: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", attribute)


def prometheus_series(metric: Metric) -> tuple[str, ...]:
    """The sample names a query may use for this metric."""
    name = prometheus_name(metric)
    if metric.kind == "counter":
        return (f"{name}_total",)
    if metric.kind == "histogram":
        return (f"{name}_bucket", f"{name}_sum", f"{name}_count")
    return (name,)


def emitted_series() -> frozenset[str]:
    return frozenset(s for m in REGISTRY for s in prometheus_series(m))
