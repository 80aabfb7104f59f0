"""The worker's HTTP port answers errors in the API's shape, ``{"error", "detail"}``."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from service.worker.http import create_worker_app
from service.worker.status import WorkerStatus


class Probe:
    """What the worker app reads: a status and a readiness check (``broken`` raises)."""

    def __init__(self, *, broken: bool = False) -> None:
        self.status = WorkerStatus(worker_id="w1", profiles={})
        self.broken = broken

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.broken:
            raise RuntimeError("probe failed: secret internals")
        return True, {"status": "ready"}


async def test_unknown_paths_and_methods_get_the_service_error_shape() -> None:
    async with AsyncTestClient(create_worker_app(Probe())) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        r = await client.get("/nowhere")
        assert r.status_code == 404
        assert r.json() == {"error": "not_found", "detail": "no route or resource at /nowhere"}
        r = await client.post("/healthz")
        assert r.status_code == 405
        assert r.json() == {
            "error": "method_not_allowed",
            "detail": "POST is not allowed on /healthz",
        }


async def test_a_failing_probe_is_an_internal_error_without_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with AsyncTestClient(create_worker_app(Probe(broken=True))) as client:
        r = await client.get("/readyz")
    assert r.status_code == 500
    assert r.json() == {
        "error": "internal_error",
        "detail": "an internal error occurred; it was logged",
    }
    assert "secret internals" in caplog.text  # logged, not answered
