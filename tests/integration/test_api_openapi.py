"""The OpenAPI document covers every route, body and error response of the app."""

from __future__ import annotations

import re
from pathlib import Path

from litestar.handlers import HTTPRouteHandler

from tests.integration.api_server import running_api

README = Path(__file__).resolve().parents[2] / "README.md"


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
    readme_codes: dict[str, set[str]] = {}
    for status, codes_text in re.findall(r"^\| (\d{3}) \| (.+?) \|", README.read_text(), re.M):
        readme_codes.setdefault(status, set()).update(re.findall(r"`(\w+)`", codes_text))
    for path, item in doc["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"400", "401", "408", "431", "503"} <= codes, (method, path)
            for code in codes - {"200", "201"}:
                content = op["responses"][code]["content"]["application/json"]
                ref = content["schema"]
                assert ref == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
                # examples name a code the README lists for that status (not random letters)
                shown = [e["value"]["error"] for e in content["examples"].values()]
                assert shown and set(shown) <= readme_codes[code], (method, path, code, shown)
            if "requestBody" in op:
                assert {"413", "415", "422"} <= codes, (method, path)
    for path, model in (("/api/v1/jobs", "Job"), ("/api/v1/jobs/batch", "BatchResult")):
        answers = doc["paths"][path]["post"]["responses"]  # 201 created, 200 a repeat
        for code in ("200", "201"):
            ref = answers[code]["content"]["application/json"]["schema"]
            assert ref == {"$ref": f"#/components/schemas/{model}"}, (path, code)
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
    assert (
        "examples"
        not in doc["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
    )  # Litestar's generated example was a random key and value
    body = doc["components"]["schemas"]["CreateJob"]
    assert {"owner_service", "task_type", "model_profile"} <= set(body["required"])
