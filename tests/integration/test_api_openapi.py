"""The OpenAPI document covers every route, body and error response of the app."""

from __future__ import annotations

import re

from litestar.handlers import HTTPRouteHandler

from tests.integration.api_server import running_api


async def test_every_route_is_documented_with_its_errors(db_url: str) -> None:
    async with running_api(db_url) as api:
        r = await api.client.get("/schema/openapi.json")
        assert r.status_code == 200
        doc = r.json()
        assert (await api.client.get("/schema")).status_code == 200
        documented = {
            (method.upper(), path) for path, item in doc["paths"].items() for method in item
        }
        in_app = set()
        for route in api.app.routes:
            if route.path.startswith("/schema"):
                continue
            for handler in route.route_handlers:
                if isinstance(handler, HTTPRouteHandler):
                    for method in handler.http_methods - {"OPTIONS", "HEAD"}:
                        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
                        in_app.add((method, path))
    assert in_app and in_app <= documented, in_app - documented
    for path, item in doc["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"400", "401", "408", "431", "503"} <= codes, (method, path)
            for code in codes - {"200", "201"}:
                ref = op["responses"][code]["content"]["application/json"]["schema"]
                assert ref == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
            if "requestBody" in op:
                assert {"413", "415", "422"} <= codes, (method, path)
    for path, model in (("/api/v1/jobs", "Job"), ("/api/v1/jobs/batch", "BatchResult")):
        answers = doc["paths"][path]["post"]["responses"]  # 201 created, 200 a repeat
        for code in ("200", "201"):
            ref = answers[code]["content"]["application/json"]["schema"]
            assert ref == {"$ref": f"#/components/schemas/{model}"}, (path, code)
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
    body = doc["components"]["schemas"]["CreateJob"]
    assert {"owner_service", "task_type", "model_profile"} <= set(body["required"])
