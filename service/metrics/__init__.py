"""Recording the service's metrics: one call per event at the place it happens.

Why module-level instruments on the global meter: the OpenTelemetry API hands out proxy
instruments that cost nothing until ``service.metrics.export.setup_metrics`` installs a real
MeterProvider (and stay no-ops when it never does, e.g. ``OTEL_SDK_DISABLED=true``), so the
worker and API code records unconditionally. Every instrument comes from the registry in
``names.py``; attribute sets are the ones declared there.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from opentelemetry import metrics as otel
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from service.metrics import labels, names
from service.tracing import error_type

METER_NAME = "ai_service"
Observe = Callable[[names.Metric], Iterable[Observation]]


def build_instruments(meter: Meter, observe: Observe) -> dict[str, Any]:
    """One instrument per registry entry, keyed by name (tests build them on their own meter);
    asynchronous ones report what ``observe(metric)`` yields at each collection."""
    out: dict[str, Any] = {}
    for m in names.REGISTRY:
        if m.kind == "counter":
            out[m.name] = meter.create_counter(m.name, m.unit, m.description)
        elif m.kind == "histogram":
            out[m.name] = meter.create_histogram(
                m.name, m.unit, m.description, explicit_bucket_boundaries_advisory=m.buckets
            )
        else:

            def callback(options: CallbackOptions, m: names.Metric = m) -> Iterable[Observation]:
                return observe(m)

            create = (
                meter.create_observable_gauge
                if m.kind == "observable_gauge"
                else meter.create_observable_up_down_counter
            )
            out[m.name] = create(m.name, [callback], m.unit, m.description)
    return out


class QueueSnapshot:
    """The latest per-profile queue sample (``service.metrics.queue``), read at collection.

    A profile whose queue drained reads 0 (so a graph and an alert see it reach 0) for
    ``KEEP_DRAINED_S``, then its series ends, unless it is one this process expects (served or
    configured): profiles are caller-chosen names, and each one ever queued would otherwise
    stay a series for the process's life."""

    STALE_AFTER = 60.0  # a sampler that stopped answering must not freeze the gauges
    KEEP_DRAINED_S = 900.0

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        self.at = 0.0
        self.expected: set[str] = set()
        self._last_queued: dict[str, float] = {}

    def expect(self, profiles: Iterable[str]) -> None:
        """Profiles reported (as 0) before any job of theirs has been pending: an idle system
        otherwise has no queue series, and the dashboard's profile list comes out empty."""
        for profile in profiles:
            self.expected.add(profile)
            self.rows.setdefault(profile, _drained())
        labels.profiles.allow(self.expected)

    def update(self, rows: Iterable[dict[str, Any]], *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        fresh: dict[str, dict[str, float]] = {}
        for r in rows:
            profile = labels.profiles(str(r["model_profile"]))  # past the bound: as "other"
            v = fresh.setdefault(profile, _drained())
            v[names.QUEUE_PENDING.name] += float(r.get("pending") or 0)
            v[names.QUEUE_DUE.name] += float(r.get("due") or 0)
            age = float(r.get("oldest_pending_age_seconds") or 0)
            v[names.QUEUE_OLDEST_AGE.name] = max(v[names.QUEUE_OLDEST_AGE.name], age)
            self._last_queued[profile] = now
        rows_now: dict[str, dict[str, float]] = {}
        for profile in self.rows.keys() | fresh.keys():
            if profile in fresh:
                rows_now[profile] = fresh[profile]
            elif profile in self.expected or (
                now - self._last_queued.get(profile, now) < self.KEEP_DRAINED_S
            ):
                rows_now[profile] = _drained()
            else:
                self._last_queued.pop(profile, None)
        # one assignment: a collection on another thread (METRICS_PORT's own listener) reads
        # either the old rows or the new, never a dict changing under it
        self.rows = rows_now
        self.at = time.monotonic()

    def observe(self, metric: names.Metric) -> Iterable[Observation]:
        if time.monotonic() - self.at > self.STALE_AFTER:
            return []
        rows = self.rows
        return [Observation(v[metric.name], {"model_profile": p}) for p, v in rows.items()]


def _drained() -> dict[str, float]:
    return {m.name: 0.0 for m in (names.QUEUE_PENDING, names.QUEUE_DUE, names.QUEUE_OLDEST_AGE)}


class Workers:
    """The worker processes' own counters (``WorkerStatus``), read at collection: in-flight
    and capacity cost the job path nothing and cannot drift from ``/worker/status``.

    A worker that is not running (starting, draining, stopped) reports capacity 0 rather than
    no value: its final export then says 0, where a missing point would leave the collector
    showing its last capacity until the series expires, doubling "capacity" on the dashboard
    through every rolling restart."""

    def __init__(self) -> None:
        # by id: WorkerStatus is a dataclass (unhashable); gone with its worker
        self._statuses: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

    def watch(self, status: Any) -> None:
        self._statuses[id(status)] = status

    def observe(self, metric: names.Metric) -> Iterable[Observation]:
        totals: dict[str, int] = {}
        for status in list(self._statuses.values()):
            claiming = status.state == "running"
            for profile, stats in status.profiles.items():
                if metric is names.WORKER_CAPACITY:
                    value = stats.capacity if claiming else 0
                elif metric is names.WORKERS_PAUSED:
                    paused = stats.breaker is not None and stats.breaker.paused
                    value = int(claiming and paused)
                else:
                    value = stats.in_flight
                totals[profile] = totals.get(profile, 0) + value
        return [Observation(v, {"model_profile": p}) for p, v in totals.items()]


queue_sample = QueueSnapshot()
workers = Workers()


def _observe(metric: names.Metric) -> Iterable[Observation]:
    if metric in (names.JOBS_IN_FLIGHT, names.WORKER_CAPACITY, names.WORKERS_PAUSED):
        return workers.observe(metric)
    return queue_sample.observe(metric)


_i = build_instruments(otel.get_meter(METER_NAME), _observe)


def _job(job: Any) -> dict[str, str]:
    return {
        "model_profile": labels.profiles(job.model_profile),
        "task_type": labels.task_types(job.task_type),
    }


# --- API --------------------------------------------------------------------------------------
def jobs_created(jobs: Iterable[Any]) -> None:
    """Count newly inserted jobs (anything with model_profile and task_type), grouped."""
    counts: dict[tuple[str, str], int] = {}
    for j in jobs:
        key = (labels.profiles(j.model_profile), labels.task_types(j.task_type))
        counts[key] = counts.get(key, 0) + 1
    for (profile, task_type), n in counts.items():
        _i[names.JOBS_CREATED.name].add(n, {"model_profile": profile, "task_type": task_type})


# --- worker -----------------------------------------------------------------------------------
def watch_worker(status: Any) -> None:
    """Report this worker's in-flight jobs and capacity (a ``WorkerStatus``) while it lives.
    The counters that alerts watch for a first event start at 0: a series that appears at 1
    has no ``increase()`` in Prometheus (it counts from a series' first sample), so the one
    lease reaped after a worker's OOM kill would never fire AiServiceWorkersLost."""
    workers.watch(status)
    _i[names.LISTENER_RECONNECTS.name].add(0)
    _i[names.LEASES_RENEWED.name].add(0)
    for profile in status.profiles:
        _i[names.LEASES_LOST.name].add(0, {"model_profile": labels.profiles(profile)})


def reaper_running() -> None:
    """The reaped-leases series start at 0 in every process that reaps — the API's too: any
    process may win the reaper's lock, and the API is the only reaper when every worker is
    external or the one worker was OOM-killed (see ``watch_worker`` for why 0 matters)."""
    for outcome in ("requeued", "failed"):
        _i[names.LEASES_REAPED.name].add(0, {"outcome": outcome})


def jobs_claimed(jobs: Iterable[Any]) -> None:
    """Pickup latency: due time (``Job.due_at``) to claim (``started_at``), both stamped by
    the database, so worker clock skew cannot bend it."""
    hist = _i[names.PICKUP_LATENCY.name]
    for job in jobs:
        if job.started_at is not None:
            hist.record(max(0.0, (job.started_at - job.due_at).total_seconds()), _job(job))


def job_ran(job: Any, seconds: float, outcome: str) -> None:
    _i[names.JOB_DURATION.name].record(seconds, {**_job(job), "outcome": outcome})


def job_completed(job: Any) -> None:
    _i[names.JOBS_COMPLETED.name].add(1, _job(job))


def job_failed(job: Any, error_category: str, *, final: bool) -> None:
    attrs = {
        **_job(job),
        "error_category": labels.error_categories(error_category),
        "outcome": "final" if final else "retry",
    }
    _i[names.JOBS_FAILED.name].add(1, attrs)


def listener_reconnected() -> None:
    _i[names.LISTENER_RECONNECTS.name].add(1)


def leases_renewed(count: int) -> None:
    if count:
        _i[names.LEASES_RENEWED.name].add(count)


def lease_lost(profile: str) -> None:
    _i[names.LEASES_LOST.name].add(1, {"model_profile": labels.profiles(profile)})


def leases_reaped(requeued: int, failed: int) -> None:
    for outcome, n in (("requeued", requeued), ("failed", failed)):
        if n:
            _i[names.LEASES_REAPED.name].add(n, {"outcome": outcome})


# --- providers --------------------------------------------------------------------------------
class GenAiCall:
    """Times one inference call and records its token usage (GenAI semantic conventions).

    ``with GenAiCall("chat", provider, model, host) as call: ...; call.usage(...)``; an
    exception leaving the block is recorded as ``error.type`` as the call's span records it
    (``service.tracing.error_type``: its category, ``cancelled``, else the class name).
    """

    def __init__(self, operation: str, provider: str, model: str, server_address: str) -> None:
        self.attrs: dict[str, str] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "server.address": server_address,
        }
        self._started = 0.0

    def __enter__(self) -> GenAiCall:
        self._started = time.perf_counter()
        return self

    def usage(
        self, response_model: str | None, input_tokens: int | None, output_tokens: int | None
    ) -> None:
        """Record the counts the server sent; one it left out is not recorded as 0."""
        if response_model:
            self.attrs["gen_ai.response.model"] = response_model
        hist = _i[names.GEN_AI_TOKENS.name]
        if input_tokens is not None:
            hist.record(input_tokens, {**self.attrs, "gen_ai.token.type": "input"})
        if output_tokens is not None:
            hist.record(output_tokens, {**self.attrs, "gen_ai.token.type": "output"})

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        attrs = dict(self.attrs)
        if exc_type is not None:
            attrs["error.type"] = error_type(exc) if exc is not None else exc_type.__qualname__
        _i[names.GEN_AI_DURATION.name].record(time.perf_counter() - self._started, attrs)
