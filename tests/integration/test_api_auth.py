"""Bearer auth on /api/v1/*: on/off, token rotation, open probes and docs, no token leaks."""

from __future__ import annotations

import logging
import re

import pytest
from litestar import Litestar

from service.api import errors
from service.config import Secret, Settings
from tests.integration.api_server import job_body, running_api

OLD, NEW = "old-token-5f1d", "new-token-9a2c"
SOME_ID = "0190f6a2-7c1e-7d3a-9b4e-2f5c8a1d6e07"  # a well-formed UUIDv7 no job has


def api_routes(app: Litestar) -> list[tuple[str, str]]:
    """Every method and path the app serves under /api/v1 (path parameters filled with a
    well-formed id), read from the app itself so that a route added later is covered too.
    OPTIONS is Litestar's automatic preflight answer, not a route of ours."""
    found: list[tuple[str, str]] = []
    for route in app.routes:
        if not route.path.startswith("/api/v1/"):
            continue
        path = re.sub(r"\{[^}]+\}", SOME_ID, route.path)
        found += [(m, path) for m in sorted(getattr(route, "methods", ())) if m != "OPTIONS"]
    return found


async def test_no_token_configured_means_open(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The seed's default, kept; the process says so at start, as a warning."""
    caplog.set_level(logging.WARNING, logger="ai_service.api")
    async with running_api(db_url) as api:
        r = await api.client.get("/api/v1/stats")
        assert r.status_code == 200
        schema = (await api.client.get("/schema/openapi.json")).json()
        assert "security" not in schema["paths"]["/api/v1/stats"]["get"]
    assert "AI_SERVICE_TOKEN is not set" in caplog.text


async def test_tokens_rotation_and_401s(
    db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    # every refusal logged (not one a second per status and code): this test reads them all
    monkeypatch.setattr(errors._Throttle, "INTERVAL", 0.0)
    settings = Settings(api_tokens=Secret(f"{OLD}, {NEW}"), db_pool_size=4)
    async with running_api(db_url, settings) as api:
        c = api.client
        for path in ("/healthz", "/readyz", "/schema", "/schema/openapi.json"):
            assert (await c.get(path)).status_code == 200, path
        for path in ("/healthz", "/readyz"):  # load balancers and `curl -I` use HEAD
            head = await c.head(path)
            assert (head.status_code, head.content) == (200, b""), path
        routes = api_routes(api.app)
        assert {("GET", "/api/v1/stats"), ("POST", "/api/v1/jobs/claim")} <= set(routes)
        for headers in (
            {},
            {"Authorization": "Bearer"},
            {"Authorization": f"Basic {OLD}"},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {OLD}x"},
        ):
            for method, path in routes:
                r = await c.request(method, path, headers=headers, json=job_body())
                assert r.status_code == 401, (headers, method, path, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)
                assert r.json()["error"] == "unauthorized"
                assert OLD not in r.text and NEW not in r.text
        for token in (OLD, NEW):
            r = await c.post(
                "/api/v1/jobs", json=job_body(), headers={"Authorization": f"bearer {token}"}
            )
            assert r.status_code == 201
            r = await c.get("/api/v1/stats", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            assert token not in r.text
        schema = (await c.get("/schema/openapi.json")).text
        assert OLD not in schema and NEW not in schema
        assert '"BearerToken"' in schema
        bad = job_body(priority="not a number", owner_ref="REF-VALUE-123")
        r = await c.post("/api/v1/jobs", json=bad, headers={"Authorization": f"Bearer {NEW}"})
        assert r.status_code == 422
    assert OLD not in caplog.text and NEW not in caplog.text
    # every refusal has its line (uvicorn's access log is off), without headers or values
    assert "POST /api/v1/jobs answered 401 unauthorized" in caplog.text
    assert "GET /api/v1/stats answered 401 unauthorized" in caplog.text
    assert "POST /api/v1/jobs answered 422 validation_error (priority)" in caplog.text
    assert "REF-VALUE-123" not in caplog.text and "not a number" not in caplog.text
    assert "AI_SERVICE_TOKEN is not set" not in caplog.text


async def test_auth_on_without_a_usable_token_lets_nobody_in(db_url: str) -> None:
    # ``from_env`` refuses such a value; built past it, the guard must still fail closed.
    settings = Settings(api_tokens=Secret(" , "), db_pool_size=4)
    assert settings.auth_required and settings.tokens == ()
    async with running_api(db_url, settings) as api:
        c = api.client
        for headers in ({}, {"Authorization": "Bearer ,"}, {"Authorization": "Bearer x"}):
            for method, path in (("GET", "/api/v1/stats"), ("POST", "/api/v1/jobs")):
                r = await c.request(method, path, headers=headers, json=job_body())
                assert r.status_code == 401, (headers, path)
                assert r.json()["error"] == "unauthorized"
        assert (await c.get("/healthz")).status_code == 200
        schema = (await c.get("/schema/openapi.json")).json()
        assert schema["paths"]["/api/v1/stats"]["get"]["security"] == [{"BearerToken": []}]
