"""The API's HTTP server telemetry from a real ``ai-service api`` process: server spans named
after the route template, and HTTP server metrics whose series a caller cannot multiply.

Why a process: the span names are decided by Litestar's router and the metric attributes by
the process's MeterProvider, both as ``ai-service api`` builds them; what is asserted is what
the OTLP receiver decoded and what ``/metrics`` serves (API port and METRICS_PORT listener).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_tracing import TOKEN, Proc, base_env
from tests.helpers import free_port, wait_for
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow

MARKER = uuid.uuid4().hex[:10]  # in every Host header sent: must reach no metric
HOSTS = [f"h{i}-{MARKER}.example" for i in range(25)]
JOB_ROUTE = "/api/v1/jobs/{job_id}"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


def api_env(db_url: str, receiver: OtlpReceiver, port: int, metrics_port: int) -> dict[str, str]:
    return {
        **base_env(db_url),
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,  # metrics: Prometheus only
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def http_series(text: str) -> dict[str, set[frozenset[tuple[str, str]]]]:
    """Label sets of every ``http_server_*`` sample, by sample name (without the exporter's
    ``otel_scope_*`` labels and histogram buckets' ``le``)."""
    out: dict[str, set[frozenset[tuple[str, str]]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("http_server_") and not s.name.endswith("_created"):
                labels = {
                    k: v for k, v in s.labels.items() if k != "le" and not k.startswith("otel_")
                }
                out.setdefault(s.name, set()).add(frozenset(labels.items()))
    return out


async def test_host_headers_and_job_ids_reach_no_metric_series_and_no_span_name(
    db_url: str, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    port, metrics_port = free_port(), free_port()
    api = Proc("api", api_env(db_url, receiver, port, metrics_port), tmp_path / "api.log", port)
    try:
        await anyio.to_thread.run_sync(lambda: wait_for(lambda: api.ready("/healthz"), what="api"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for host in HOSTS:  # no token: refused by the guard, after the middleware ran
                r = await client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers={"Host": host})
                assert r.status_code == 401, r.text
            auth = {"Authorization": f"Bearer {TOKEN}", "Host": HOSTS[0]}
            for _ in range(2):  # two job ids, one route
                r = await client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=auth)
                assert r.status_code == 404, r.text
            r = await client.get(f"/no/such/{uuid.uuid4()}", headers={"Host": HOSTS[1]})
            assert r.status_code == 404, r.text
            scrapes = [
                (await client.get(url)).text
                for url in ("/metrics", f"http://127.0.0.1:{metrics_port}/metrics")
            ]
        assert await anyio.to_thread.run_sync(api.stop) == 0, api.log()
    finally:
        if api.proc.poll() is None:
            api.proc.kill()
            api.proc.wait()

    for text in scrapes:
        assert MARKER not in text, "a client's Host header became a metric label"
        series = http_series(text)
        assert "http_server_duration_milliseconds_count" in series, sorted(series)
        durations = series["http_server_duration_milliseconds_count"]
        get = {("http_method", "GET"), ("http_scheme", "http")}
        assert durations == {
            frozenset({*get, ("http_status_code", "401"), ("http_target", JOB_ROUTE)}),
            frozenset({*get, ("http_status_code", "404"), ("http_target", JOB_ROUTE)}),
            frozenset({*get, ("http_status_code", "404"), ("http_target", "")}),  # unrouted
        }
        labels = {k for sets in series.values() for s in sets for k, _ in s}
        assert labels <= {"http_method", "http_scheme", "http_status_code", "http_target"}

    expected = len(HOSTS) + 3

    def server_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.span.kind == 2]

    spans = await anyio.to_thread.run_sync(
        lambda: receiver.wait_for(lambda s: len(server_spans(s)) >= expected)
    )
    servers = server_spans(spans)
    routed = [s for s in servers if s.name != "GET"]
    assert {(s.name, s.attrs.get("http.route")) for s in routed} == {
        (f"GET {JOB_ROUTE}", JOB_ROUTE)
    }
    assert len(routed) == len(HOSTS) + 2
    [unrouted] = [s for s in servers if s.name == "GET"]
    assert "http.route" not in unrouted.attrs
    for s in spans:
        assert not UUID_RE.search(s.name), s.name
        assert not UUID_RE.search(str(s.attrs.get("http.route", ""))), s.attrs


async def test_unsampled_requests_keep_the_route_on_their_metrics(
    db_url: str, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """A request whose span is sampled out (a ratio sampler, or a caller's traceparent with
    flags 00) is still measured, under its route template like any other."""
    port, metrics_port = free_port(), free_port()
    env = {**api_env(db_url, receiver, port, metrics_port), "OTEL_TRACES_SAMPLER": "always_off"}
    api = Proc("api", env, tmp_path / "api.log", port)
    try:
        await anyio.to_thread.run_sync(lambda: wait_for(lambda: api.ready("/healthz"), what="api"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            r = await client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=auth)
            assert r.status_code == 404, r.text
            text = (await client.get("/metrics")).text
        assert await anyio.to_thread.run_sync(api.stop) == 0, api.log()
    finally:
        if api.proc.poll() is None:
            api.proc.kill()
            api.proc.wait()
    durations = http_series(text)["http_server_duration_milliseconds_count"]
    get = {("http_method", "GET"), ("http_scheme", "http")}
    assert durations == {frozenset({*get, ("http_status_code", "404"), ("http_target", JOB_ROUTE)})}
    assert [s for s in receiver.spans() if s.span.kind == 2] == []  # (sampled out indeed)
