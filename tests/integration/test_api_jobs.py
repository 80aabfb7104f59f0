"""Caller-facing routes through real HTTP (uvicorn) on real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from service.config import Settings
from service.jobs.model import MAX_JSON_DEPTH
from tests.integration.api_server import Api, job_body, running_api

MISSING = "0190a1b2-0000-7000-8000-000000000000"


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    settings = Settings(db_pool_size=8, max_batch_size=2000, max_request_bytes=256 * 1024)
    async with running_api(db_url, settings) as api:
        yield api


def assert_error(body: dict[str, Any], code: str, field: str | None = None) -> None:
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    if field is not None:
        assert [f["field"] for f in body["fields"]] == [field], body


async def test_create_and_get(api: Api) -> None:
    r = await api.client.post("/api/v1/jobs", json=job_body(owner_ref="beeline/1", priority=5))
    assert r.status_code == 201
    job = r.json()
    assert job["status"] == "pending" and job["priority"] == 5 and job["max_attempts"] == 3
    got = await api.client.get(f"/api/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.json() == job
    # read leniently, as the seed's API did (README): a number as a string, Unix seconds
    r = await api.client.post("/api/v1/jobs", json=job_body(priority="7", run_after=1_900_000_000))
    assert r.status_code == 201, r.text
    assert r.json()["priority"] == 7
    assert r.json()["run_after"].startswith("2030-03-17T17:46:40")


async def test_idempotency_same_body_200_different_body_409(api: Api) -> None:
    body = job_body(idempotency_key="call-42")
    first = await api.client.post("/api/v1/jobs", json=body)
    again = await api.client.post("/api/v1/jobs", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other = await api.client.post("/api/v1/jobs", json={**body, "input": {"user": "other"}})
    assert other.status_code == 409
    assert_error(other.json(), "idempotency_conflict")
    assert other.json()["job_id"] == first.json()["id"]
    # the key is scoped per owner_service
    elsewhere = await api.client.post("/api/v1/jobs", json={**body, "owner_service": "pf"})
    assert elsewhere.status_code == 201


# Loops rather than parametrize: parametrized coroutine tests do not collect here (the
# anyio marker is added after collection by conftest.py).
BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    (job_body(bogus=1), "bogus"),
    (job_body(priority="high"), "priority"),
    (job_body(priority=10_000), "priority"),
    (job_body(model_profile="no spaces"), "model_profile"),
    # a final newline: Python's `$` matched before it, and "sec\n" was stored
    (job_body(model_profile="qwen2.5-14b\n"), "model_profile"),
    (job_body(owner_service="telephony\n"), "owner_service"),
    (job_body(task_type="llm_chat\n"), "task_type"),
    (job_body(input=[1, 2]), "input"),
    ({"owner_service": "t", "task_type": "x"}, "model_profile"),
    (job_body(max_attempts=0), "max_attempts"),
    (job_body(run_after="yesterday"), "run_after"),
    (job_body(run_after="2030-01-01T12:00:00"), "run_after"),  # no offset: which zone?
]


async def test_create_validation_names_the_field(api: Api) -> None:
    for body, field in BAD_BODIES:
        r = await api.client.post("/api/v1/jobs", json=body)
        assert r.status_code == 422, body
        assert_error(r.json(), "validation_error", field)
        assert r.json()["detail"].startswith(f"{field}: ")


# Inputs of the built-in task types, refused as the handler would refuse them.
BAD_INPUTS: list[tuple[dict[str, Any], str, str]] = [
    (job_body(input={"messages": [{"role": "bot", "content": "hi"}]}),
     "input.messages[0].role", "expected one of system, user, assistant"),
    (job_body(task_type="call_analysis", input={"messages": "not a list"}),
     "input.messages", "non-empty list"),
    (job_body(input={"user": "hi", "max_token": 5}), "input.max_token", "not a chat field"),
    (job_body(input={"user": "hi", "temperature": 7}), "input.temperature", "between 0 and 2"),
    (job_body(input={}), "input", "needs either messages"),
    (job_body(task_type="transcribe", model_profile="voxtral-small", input={"user": "hi"}),
     "input", "exactly one of audio_url or audio_base64"),
    (job_body(task_type="transcription", model_profile="voxtral-small",
              input={"audio_url": "https://a.example/x.wav", "num_speakers": 0}),
     "input.num_speakers", "integer from 1 to"),
]  # fmt: skip


async def test_builtin_task_inputs_are_checked_at_submission(api: Api) -> None:
    for body, field, words in BAD_INPUTS:
        r = await api.client.post("/api/v1/jobs", json=body)
        assert r.status_code == 422, (body, r.json())
        assert_error(r.json(), "validation_error", field)
        assert r.json()["detail"].startswith(f"{field}: ") and words in r.json()["detail"]
        batch = {"jobs": [job_body(), body]}
        r = await api.client.post("/api/v1/jobs/batch", json=batch)
        assert r.status_code == 422, (body, r.json())
        assert_error(r.json(), "validation_error", f"jobs[1].{field}")
    listed = await api.client.get("/api/v1/jobs")
    assert listed.json()["items"] == []  # nothing was written, not even the batches' good job
    # pairs no built-in handler serves keep their input opaque, as in the seed
    for other in ({"task_type": "tg_analysis"}, {"model_profile": "another-model"}):
        r = await api.client.post("/api/v1/jobs", json=job_body(input={"anything": 1}, **other))
        assert r.status_code == 201, r.json()


async def test_malformed_json_wrong_method_and_too_large(api: Api) -> None:
    for path in ("/api/v1/jobs", "/api/v1/jobs/batch"):
        r = await api.client.post(path, content=b"", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert_error(r.json(), "invalid_json")
        assert "empty" in r.json()["detail"]
    r = await api.client.post(
        "/api/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert_error(r.json(), "invalid_json")
    r = await api.client.post(
        "/api/v1/jobs", content=b'"\x90o\xff"', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert_error(r.json(), "invalid_json")
    # whatever the decoder's words for it: truncated, a lone surrogate, numbers out of range
    for body in (b'{"a":', b'{"input": {"a": "\\ud800"}}', b'{"input": {"a": 1e400}}',
                 b'{"input": {"a": 1' + b"0" * 5000 + b"}}"):  # fmt: skip
        r = await api.client.post(
            "/api/v1/jobs", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, (body[:40], r.text)
        assert_error(r.json(), "invalid_json")
        if b"ud800" in body:  # msgspec says "truncated": the detail names the likely cause
            assert "unpaired \\ud800-\\udfff escape" in r.json()["detail"], r.text
    # bodies a web page can send cross-site without a preflight, or a `curl -d` form: refused
    body = json.dumps(job_body()).encode()
    for media_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = await api.client.post(
            "/api/v1/jobs/cancel", content=b'{"all": true}', headers={"content-type": media_type}
        )
        assert r.status_code == 415, (media_type, r.text)
        assert_error(r.json(), "unsupported_media_type")
    r = await api.client.post("/api/v1/jobs/cancel", content=b'{"all": true}')  # a Blob body
    assert r.status_code == 415, r.text
    assert "got none" in r.json()["detail"]
    gzipped = gzip.compress(body)  # read as JSON it was "invalid character (byte 0)"
    r = await api.client.post(
        "/api/v1/jobs", content=gzipped,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )  # fmt: skip
    assert r.status_code == 415, r.text
    assert_error(r.json(), "unsupported_media_type")
    assert "Content-Encoding: gzip" in r.json()["detail"]
    r = await api.client.post(
        "/api/v1/jobs", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 201
    r = await api.client.delete("/api/v1/jobs")
    assert r.status_code == 405
    assert_error(r.json(), "method_not_allowed")
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}
    r = await api.client.post("/api/v1/jobs", json=job_body(input={"blob": "x" * 300_000}))
    assert r.status_code == 413
    assert_error(r.json(), "request_too_large")


async def test_unknown_ids_are_404_malformed_ones_422_naming_job_id(api: Api) -> None:
    r = await api.client.get(f"/api/v1/jobs/{MISSING}")
    assert r.status_code == 404
    assert_error(r.json(), "not_found")
    assert r.json()["job_id"] == MISSING
    r = await api.client.post(f"/api/v1/jobs/{MISSING}/retry")
    assert r.status_code == 404
    for job_id in ("not-a-uuid", "1234"):
        for method, path, body in [
            ("GET", "", None),
            ("POST", "/retry", None),
            ("POST", "/cancel", None),
            ("POST", "/heartbeat", {"worker_id": "w"}),
            ("POST", "/complete", {"worker_id": "w"}),
            ("POST", "/fail", {"worker_id": "w", "error_category": "x"}),
        ]:
            r = await api.client.request(method, f"/api/v1/jobs/{job_id}{path}", json=body)
            assert r.status_code == 422, (method, path, r.text)
            assert_error(r.json(), "validation_error", "job_id")
            assert r.json()["detail"] == "job_id: invalid UUID"
    r = await api.client.get("/api/v1/nothing")
    assert r.status_code == 404
    r = await api.client.get("/api/v1/jobs/batch")  # a route of its own, for POST only
    assert r.status_code == 405
    assert "POST" in r.headers["allow"] and "GET" not in r.headers["allow"]


async def test_bad_query_values_are_422_named_as_sent(api: Api) -> None:
    for query, field, message in [
        ("limit=0", "limit", "must be an integer >= 1"),
        ("limit=501", "limit", "must be an integer <= 500"),
        ("limit=1.5", "limit", "must be an integer"),
        ("limit=ten", "limit", "must be an integer"),
        ("status=bogus", "status", "invalid enum value 'bogus'"),
        ("cursor=xyz", "cursor", "invalid UUID"),
        ("id=nope", "id", "invalid UUID"),
        (f"id={MISSING}&id=nope", "id", "invalid UUID"),
        ("created_after=notadate", "created_after", "invalid RFC3339 encoded datetime"),
        ("created_before=2030-01-01T12:00:00", "created_before", "expected `datetime` with a"),
    ]:
        r = await api.client.get(f"/api/v1/jobs?{query}")
        assert r.status_code == 422, query
        assert_error(r.json(), "validation_error", field)
        assert r.json()["detail"].startswith(f"{field}: {message}"), (query, r.json())
    for query, message in [("wait_seconds=61", "must be a number <= 60.0"),
                           ("wait_seconds=soon", "must be a number")]:  # fmt: skip
        r = await api.client.get(f"/api/v1/jobs/{MISSING}?{query}")
        assert r.status_code == 422
        assert r.json()["fields"] == [{"field": "wait_seconds", "message": message}]
    # a typo is refused, not ignored (?wait=30 was answered at once: a client looping on it),
    # and so is a repeat with another value (the last was used)
    for query, field in [("wait=30", "wait"), ("wait_seconds=1&wait_seconds=3", "wait_seconds")]:
        r = await api.client.get(f"/api/v1/jobs/{MISSING}?{query}")
        assert r.status_code == 422, (query, r.text)
        assert_error(r.json(), "validation_error", field)
    r = await api.client.get(f"/api/v1/jobs/{MISSING}?wait_seconds=1&wait_seconds=1")
    assert r.status_code == 404  # the same value twice says one thing


async def test_batch_defaults_overrides_and_idempotency(api: Api) -> None:
    body = {
        "defaults": {"owner_service": "monitoring-tg", "task_type": "tg_analysis",
                     "model_profile": "qwen2.5-14b", "priority": 1},
        "jobs": [
            {"owner_ref": "m/1", "input": {"user": "a"}},
            {"owner_ref": "m/2", "priority": 9, "idempotency_key": "m2"},
            {"owner_ref": "m/3", "model_profile": "voxtral-small", "task_type": "transcribe",
             "input": {"audio_url": "https://calls.example/m3.wav"}},
        ],
    }  # fmt: skip
    r = await api.client.post("/api/v1/jobs/batch", json=body)
    assert r.status_code == 201
    out = r.json()
    assert (out["created"], out["existing"]) == (3, 0)
    jobs = [(await api.client.get(f"/api/v1/jobs/{i['id']}")).json() for i in out["items"]]
    assert [j["owner_ref"] for j in jobs] == ["m/1", "m/2", "m/3"]
    assert [j["priority"] for j in jobs] == [1, 9, 1]
    assert [j["model_profile"] for j in jobs] == ["qwen2.5-14b", "qwen2.5-14b", "voxtral-small"]
    assert jobs[2]["task_type"] == "transcribe" and jobs[0]["input"] == {"user": "a"}

    repeat = {"defaults": body["defaults"], "jobs": [body["jobs"][1]]}
    r = await api.client.post("/api/v1/jobs/batch", json=repeat)
    assert r.status_code == 200
    assert r.json()["items"] == [{"id": out["items"][1]["id"], "created": False}]


async def test_batch_errors(api: Api, db_url: str) -> None:
    base = {"defaults": {"owner_service": "t", "task_type": "x", "model_profile": "p"}}
    r = await api.client.post("/api/v1/jobs/batch", json={**base, "jobs": [{}] * 2001})
    assert r.status_code == 422
    assert_error(r.json(), "batch_too_large", "jobs")
    r = await api.client.post("/api/v1/jobs/batch", json={"jobs": [job_body(), {"priority": 1}]})
    assert r.status_code == 422
    assert_error(r.json(), "validation_error", "jobs[1].owner_service")
    r = await api.client.post("/api/v1/jobs/batch", json={**base, "jobs": [{}, {"nope": 1}]})
    assert_error(r.json(), "validation_error", "jobs[1].nope")
    r = await api.client.post("/api/v1/jobs/batch", json={**base, "jobs": []})
    assert_error(r.json(), "validation_error", "jobs")
    # an idempotency conflict refuses the whole batch: nothing is written
    await api.client.post("/api/v1/jobs", json=job_body(owner_service="t", idempotency_key="k"))
    r = await api.client.post(
        "/api/v1/jobs/batch",
        json={**base, "jobs": [{"owner_ref": "new"}, {"idempotency_key": "k", "priority": 7}]},
    )
    assert r.status_code == 409
    assert_error(r.json(), "idempotency_conflict")
    # one key twice in the batch with different bodies: no stored job is named
    twice = [{"idempotency_key": "d"}, {"idempotency_key": "d", "priority": 7}]
    r = await api.client.post("/api/v1/jobs/batch", json={**base, "jobs": twice})
    assert r.status_code == 409
    assert_error(r.json(), "idempotency_conflict")
    assert "job_id" not in r.json()
    assert "'d' appears in the batch twice" in r.json()["detail"]
    assert "0000-0000" not in r.text
    # a key in defaults, inherited by two jobs: named as the caller's mistake it is
    keyed = {"defaults": {**base["defaults"], "idempotency_key": "shared"}}
    r = await api.client.post(
        "/api/v1/jobs/batch", json={**keyed, "jobs": [{"owner_ref": "a"}, {"owner_ref": "b"}]}
    )
    assert r.status_code == 422, r.text
    assert_error(r.json(), "validation_error", "defaults.idempotency_key")
    assert "2 jobs of the batch would share it" in r.json()["detail"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM ai_jobs").fetchone() == (1,)
    # the same job asked twice, once with the default max_attempts spelled out: as a second
    # request would be judged (a repeat), not a conflict
    same = [{"idempotency_key": "s"}, {"idempotency_key": "s", "max_attempts": 3}]
    r = await api.client.post("/api/v1/jobs/batch", json={**base, "jobs": same})
    assert r.status_code == 201, r.text
    first, second = r.json()["items"]
    assert first == {"id": second["id"], "created": True} and second["created"] is False


async def test_list_filters_and_pagination_over_1200_jobs(api: Api) -> None:
    jobs = [
        {"owner_service": "tel" if i % 2 else "mon", "task_type": f"t{i % 3}",
         "model_profile": "qwen2.5-14b" if i % 4 else "vision", "owner_ref": f"r/{i}"}
        for i in range(1200)
    ]  # fmt: skip
    r = await api.client.post("/api/v1/jobs/batch", json={"jobs": jobs})
    assert r.status_code == 201
    created = [i["id"] for i in r.json()["items"]]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/api/v1/jobs", params=params)).json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 1200 and len(set(seen)) == 1200
    assert seen == sorted(created, reverse=True)  # newest first (UUIDv7 order)

    params = {"owner_service": "tel", "task_type": ["t0", "t1"], "limit": 500}
    got = (await api.client.get("/api/v1/jobs", params=params)).json()["items"]
    want = [j for j in jobs if j["owner_service"] == "tel" and j["task_type"] in ("t0", "t1")]
    assert len(got) == len(want) == 400
    assert all(j["owner_service"] == "tel" and j["task_type"] in ("t0", "t1") for j in got)
    got = (await api.client.get("/api/v1/jobs", params={"model_profile": "vision"})).json()
    assert len(got["items"]) == 100 and got["next_cursor"] is not None
    r = await api.client.get("/api/v1/jobs", params={"owner_ref": "r/7"})
    assert [j["owner_ref"] for j in r.json()["items"]] == ["r/7"]
    # one-value filters: a repeat with another value is refused, not narrowed to the last one
    r = await api.client.get("/api/v1/jobs", params={"owner_ref": ["r/7", "r/7"]})
    assert [j["owner_ref"] for j in r.json()["items"]] == ["r/7"]
    for name in ("owner_service", "owner_ref"):
        r = await api.client.get("/api/v1/jobs", params={name: ["tel", "zzz"]})
        assert r.status_code == 422, r.text
        assert_error(r.json(), "validation_error", name)
    r = await api.client.get("/api/v1/jobs", params={"id": created[:3], "status": "pending"})
    assert sorted(j["id"] for j in r.json()["items"]) == sorted(created[:3])
    r = await api.client.get("/api/v1/jobs", params={"status": ["failed", "running"]})
    assert r.json() == {"items": [], "next_cursor": None}
    # a name the list does not take is refused, not ignored (which listed every job), and so
    # is a repeated one-value parameter (the last value was used silently)
    for params in ({"stauts": "failed"}, {"offset": 500}, {"limit": [5, 500]},
                   {"cursor": [created[0], created[1]]}):  # fmt: skip
        r = await api.client.get("/api/v1/jobs", params=params)
        assert r.status_code == 422, (params, r.text)
        assert_error(r.json(), "validation_error", next(iter(params)))
    assert (
        "pages follow cursor"
        in (await api.client.get("/api/v1/jobs", params={"offset": 5})).json()["detail"]
    )


async def test_cancel_and_retry_by_filter(api: Api) -> None:
    ids = [
        (await api.client.post("/api/v1/jobs", json=job_body(owner_ref=f"c/{i}"))).json()["id"]
        for i in range(4)
    ]
    for path in ("/api/v1/jobs/cancel", "/api/v1/jobs/retry"):
        r = await api.client.post(path, json={})
        assert r.status_code == 422
        assert_error(r.json(), "filter_required")
        r = await api.client.post(path, json={"owner_ref": "c/0", "sure": True})
        assert_error(r.json(), "validation_error", "sure")
    r = await api.client.post("/api/v1/jobs/cancel", json={"ids": ids[:2]})
    assert r.status_code == 200
    assert r.json()["count"] == 2 and sorted(r.json()["ids"]) == sorted(ids[:2])
    r = await api.client.post("/api/v1/jobs/cancel", json={"ids": ids[:2]})
    assert r.json() == {"count": 0, "ids": []}
    # cancelled jobs are not retryable; failed ones are
    r = await api.client.post("/api/v1/jobs/retry", json={"ids": ids})
    assert r.json()["count"] == 0
    r = await api.client.post("/api/v1/jobs/cancel", json={"all": True})
    assert r.json()["count"] == 2
    r = await api.client.get("/api/v1/jobs", params={"status": "cancelled"})
    assert len(r.json()["items"]) == 4


async def test_single_cancel_and_retry_conflicts(api: Api) -> None:
    job = (await api.client.post("/api/v1/jobs", json=job_body())).json()
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/retry")
    assert r.status_code == 409
    assert_error(r.json(), "state_conflict")
    assert r.json()["status"] == "pending"
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await api.client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409
    assert r.json()["status"] == "cancelled" and r.json()["error"] == "state_conflict"
    r = await api.client.post(f"/api/v1/jobs/{MISSING}/cancel")
    assert r.status_code == 404


async def test_nul_characters_are_422_naming_the_field(api: Api) -> None:
    """PostgreSQL text and jsonb cannot hold a NUL (U+0000): the refusal names where it was."""
    nul = "a\u0000b"
    for body, field in [
        (job_body(input={"user": nul}), "input.user"),
        (
            job_body(task_type="tg", input={"meta": [{"ok": 1}, {nul: 1}]}),
            "input.meta[1].a\\u0000b",
        ),
        (job_body(owner_ref=nul), "owner_ref"),
        (job_body(owner_service=nul), "owner_service"),
        (job_body(idempotency_key=nul), "idempotency_key"),
    ]:
        r = await api.client.post("/api/v1/jobs", json=body)
        assert r.status_code == 422, r.text
        assert_error(r.json(), "validation_error", field)
        assert "NUL" in r.json()["detail"]
        r = await api.client.post("/api/v1/jobs/batch", json={"jobs": [job_body(), body]})
        assert r.status_code == 422, r.text
        assert_error(r.json(), "validation_error", f"jobs[1].{field}")
    r = await api.client.post("/api/v1/jobs/batch", json={"defaults": {"owner_ref": nul},
                                                          "jobs": [job_body()]})  # fmt: skip
    assert_error(r.json(), "validation_error", "defaults.owner_ref")
    for params, field in [
        ({"owner_ref": nul}, "owner_ref"),
        ({"task_type": ["x", nul]}, "task_type"),
    ]:
        r = await api.client.get("/api/v1/jobs", params=params)
        assert r.status_code == 422, r.text
        assert_error(r.json(), "validation_error", field)
    for body, field in [({"owner_service": nul}, "owner_service"),
                        ({"task_type": ["x", nul]}, "task_type[1]"),
                        ({"error_category": nul}, "error_category")]:  # fmt: skip
        for path in ("/api/v1/jobs/cancel", "/api/v1/jobs/retry"):
            r = await api.client.post(path, json=body)
            assert r.status_code == 422, r.text
            assert_error(r.json(), "validation_error", field)
    claim = {"worker_id": "w", "model_profile": "qwen2.5-14b", "task_type": nul}
    r = await api.client.post("/api/v1/jobs/claim", json=claim)
    assert_error(r.json(), "validation_error", "task_type")
    assert (await api.client.get("/api/v1/jobs")).json()["items"] == []
    # a backslash and "u0000" are text like any other
    r = await api.client.post("/api/v1/jobs", json=job_body(input={"user": "\\u0000"}))
    assert r.status_code == 201, r.text


async def test_filter_bodies_take_one_value_where_they_take_a_list(api: Api) -> None:
    """As ``claim`` takes one model_profile and ``GET /jobs`` one ``status``: a single value
    is a list of one; an empty list stays refused, and one-value fields stay one value."""
    bodies = [
        job_body(),
        job_body(task_type="tg", model_profile="vision"),
        job_body(task_type="tg"),
    ]
    ids = [(await api.client.post("/api/v1/jobs", json=b)).json()["id"] for b in bodies]
    r = await api.client.post("/api/v1/jobs/cancel", json={"model_profile": "vision"})
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == [ids[1]]
    r = await api.client.post(
        "/api/v1/jobs/cancel", json={"task_type": "tg", "status": "pending", "ids": ids[2]}
    )
    assert r.json()["ids"] == [ids[2]]
    r = await api.client.post("/api/v1/jobs/retry", json={"error_category": "timeout"})
    assert r.status_code == 200 and r.json()["count"] == 0
    r = await api.client.post("/api/v1/jobs/retry", json={"status": "cancelled"})
    assert r.status_code == 200 and r.json()["count"] == 0  # cancelled jobs are not retried
    for body, field in [({"model_profile": []}, "model_profile"), ({"ids": []}, "ids"),
                        ({"status": "bogus"}, "status"), ({"ids": "nope"}, "ids"),
                        ({"owner_service": ["telephony"]}, "owner_service"),
                        ({"task_type": 5}, "task_type")]:  # fmt: skip
        for path in ("/api/v1/jobs/cancel", "/api/v1/jobs/retry"):
            r = await api.client.post(path, json=body)
            assert r.status_code == 422, (path, body, r.text)
            assert_error(r.json(), "validation_error", field)
    r = await api.client.get("/api/v1/jobs", params={"status": "pending"})
    assert [j["id"] for j in r.json()["items"]] == [ids[0]]


async def test_times_need_an_offset_everywhere_and_keep_it(api: Api) -> None:
    """A time without an offset is refused in a batch item, in batch defaults and in a filter
    body; times with different offsets in one batch are stored as the instants they name."""
    naive = "2030-01-01T12:00:00"
    for body, field in [
        ({"jobs": [job_body(), job_body(run_after=naive)]}, "jobs[1].run_after"),
        ({"defaults": {"run_after": naive}, "jobs": [job_body()]}, "defaults.run_after"),
    ]:
        r = await api.client.post("/api/v1/jobs/batch", json=body)
        assert r.status_code == 422, body
        assert_error(r.json(), "validation_error", field)
    r = await api.client.post("/api/v1/jobs/cancel", json={"created_after": naive})
    assert r.status_code == 422
    assert_error(r.json(), "validation_error", "created_after")
    times = ["2030-01-01T12:00:00+03:00", "2030-01-01T12:00:00Z", "2030-01-01T09:00:00Z"]
    r = await api.client.post(
        "/api/v1/jobs/batch", json={"jobs": [job_body(run_after=t) for t in times]}
    )
    assert r.status_code == 201, r.text
    stored = []
    for item in r.json()["items"]:
        job = (await api.client.get(f"/api/v1/jobs/{item['id']}")).json()
        stored.append(dt.datetime.fromisoformat(job["run_after"]))
    expected = [dt.datetime.fromisoformat(t) for t in times]
    assert stored == expected  # equal as instants: 12:00+03:00 is 09:00Z


async def test_input_nested_too_deep_is_a_clear_4xx(api: Api) -> None:
    """JSON nested deeper than the decoder allows is bad input (400), not a server error."""
    deep = "[" * 2000 + "]" * 2000
    body = (
        '{"owner_service": "t", "task_type": "llm_chat", "model_profile": "qwen2.5-14b", '
        f'"input": {{"x": {deep}}}}}'
    )
    for path in ("/api/v1/jobs", "/api/v1/jobs/batch"):
        content = body if path.endswith("jobs") else f'{{"jobs": [{body}]}}'
        r = await api.client.post(
            path, content=content.encode(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, (path, r.status_code, r.text[:200])
        assert_error(r.json(), "invalid_json")


async def test_values_no_reader_could_load_back_are_refused_and_nothing_written(
    api: Api,
) -> None:
    """A run_after outside 0001-01-02..9999-12-30 UTC (which some server TimeZone renders as
    year 0 or 10000), or an input nested deeper than MAX_JSON_DEPTH, would break every read
    of the row (the worker's claim batch, listings): 422 naming the field, and no row."""
    deep = {"x": {}}
    node = deep["x"]
    for _ in range(MAX_JSON_DEPTH - 2):  # input itself is level 1: this is the deepest allowed
        node["x"] = {}
        node = node["x"]
    too_deep = {"wrap": deep}
    bad = [
        (job_body(owner_ref="bad", run_after="0001-01-01T00:00:00+14:00"), "run_after"),
        (job_body(owner_ref="bad", run_after="9999-12-31T23:59:59-14:00"), "run_after"),
        (job_body(owner_ref="bad", run_after="0001-01-01T23:59:59.999999Z"), "run_after"),
        (job_body(owner_ref="bad", run_after="9999-12-31T00:00:00Z"), "run_after"),
        (job_body(owner_ref="bad", input=too_deep), "input"),
    ]
    for body, field in bad:
        r = await api.client.post("/api/v1/jobs", json=body)
        assert r.status_code == 422, r.text
        assert_error(r.json(), "validation_error", field)
        r = await api.client.post("/api/v1/jobs/batch", json={"jobs": [job_body(), body]})
        assert r.status_code == 422, r.text
        assert_error(r.json(), "validation_error", f"jobs[1].{field}")
    r = await api.client.post("/api/v1/jobs/batch", json={"defaults": bad[0][0], "jobs": [{}]})
    assert_error(r.json(), "validation_error", "jobs[0].run_after")
    assert (await api.client.get("/api/v1/jobs")).json()["items"] == []
    ok = job_body(task_type="tg_analysis", input=deep, run_after="0001-01-02T00:00:00Z")
    r = await api.client.post("/api/v1/jobs", json=ok)
    assert r.status_code == 201, r.text
    listed = (await api.client.get("/api/v1/jobs")).json()["items"]
    assert [j["input"] for j in listed] == [deep]


async def test_a_row_no_reader_could_load_is_shown_not_a_500(api: Api, db_url: str) -> None:
    """The database refuses such rows (migration 0004), but a restore or a replica applying
    rows skips triggers: reading or listing one must still answer, as 0004 repairs it."""
    ids = []
    for _ in range(2):
        r = await api.client.post("/api/v1/jobs", json=job_body())
        assert r.status_code == 201
        ids.append(r.json()["id"])
    deep = '{"x": ' * 1000 + "1" + "}" * 1000
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ai_jobs DISABLE TRIGGER ai_jobs_refuse_unreadable_json")
        conn.execute("UPDATE ai_jobs SET input = '\"text\"' WHERE id = %s", (ids[0],))
        conn.execute("UPDATE ai_jobs SET input = %s WHERE id = %s", (deep, ids[1]))
    r = await api.client.get(f"/api/v1/jobs/{ids[0]}")
    assert r.status_code == 200 and r.json()["input"] == {"value": "text"}
    r = await api.client.get(f"/api/v1/jobs/{ids[1]}")
    assert r.status_code == 200 and r.text.count('{"x":') == 1000
    r = await api.client.get("/api/v1/jobs")
    assert r.status_code == 200 and all(f'"id":"{i}"' in r.text for i in ids)  # too deep for json
