"""The standard ``OTEL_*`` variables the operator sets win over the service's own choices:
``OTEL_TRACES_EXPORTER=none`` turns trace export off even with an endpoint, and
``OTEL_RESOURCE_ATTRIBUTES`` values win over the resource defaults (version, name), read from
the process environment as the service reads it at start-up."""

from __future__ import annotations

import os

import pytest

from service import telemetry

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def test_traces_exporter_none_disables_tracing_despite_an_endpoint() -> None:
    assert telemetry.build_provider("api", {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}) is None
    assert telemetry.build_provider("api", {**ENDPOINT, "OTEL_TRACES_EXPORTER": " None "}) is None
    provider = telemetry.build_provider("api", {**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp"})
    assert provider is not None  # the one exporter there is
    provider.shutdown()


def test_resource_attributes_from_the_environment_win_over_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES",
        "service.version=9.9.9-canary,deployment.environment=prod,service.instance.id=pod-7",
    )
    attrs = telemetry.resource("worker").attributes
    assert attrs["service.version"] == "9.9.9-canary"
    assert attrs["service.instance.id"] == "pod-7"
    assert attrs["deployment.environment"] == "prod"
    assert attrs["service.name"] == "ai-service-worker"  # not given: still the default


def test_only_a_real_service_name_attribute_replaces_the_default_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "app.service.name=x,team=ml")
    assert telemetry.resource("api").attributes["service.name"] == "ai-service-api"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=")  # names nothing
    assert telemetry.resource("api").attributes["service.name"] == "ai-service-api"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=ml, service.name = billing%20ai")
    assert telemetry.resource("api").attributes["service.name"] == "billing ai"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ai-api-eu")  # wins over the list, as specified
    assert telemetry.resource("api").attributes["service.name"] == "ai-api-eu"
