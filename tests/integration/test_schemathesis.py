"""Property-based API check: schemathesis generates requests from /schema/openapi.json and
every answer must be a non-5xx whose status, content type and body match the document.

Bounded and deterministic: a few examples per operation, derandomized, no example database,
and long-poll waits capped so no request can hang the run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.app import create_app
from service.config import Settings
from service.serve import bound_port, make_server
from tests.helpers import wait_for

EXAMPLES = 12
CHECKS: list[Any] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def server_url(db_url: str) -> Iterator[str]:
    """The API on 127.0.0.1:0 in its own thread and event loop (schemathesis is synchronous)."""
    app = create_app(Settings(db_pool_size=4, max_batch_size=50), database_url=db_url)
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=anyio.run, args=(server.serve,), daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="the API server to start")
    try:
        yield f"http://127.0.0.1:{bound_port(server)}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _cap_waits(case: Any) -> None:
    if isinstance(case.query, dict) and "wait_seconds" in case.query:
        case.query["wait_seconds"] = 0
    if isinstance(case.body, dict) and "wait_seconds" in case.body:
        case.body["wait_seconds"] = 0


def test_openapi_schema_holds_under_generated_requests(server_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server_url}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    statuses: list[int] = []

    for operation, mode in [
        (op, mode)
        for op in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            _cap_waits(case)
            response = case.call_and_validate(base_url=server_url, checks=CHECKS)
            statuses.append(response.status_code)

        try:
            run()
        except Unsatisfiable:
            # an operation without parameters or body has no invalid request to generate
            assert mode is GenerationMode.NEGATIVE
    # not vacuous: many requests were made, and both accepted and refused ones
    assert len(statuses) > 100
    assert {200, 201, 404, 422} <= set(statuses)
