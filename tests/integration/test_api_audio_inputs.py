"""A transcription's audio source is judged at submission by the worker's own rules, as far as
they need no DNS; a row that reaches a worker another way is still judged there."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from service.api.inputs import carries_large_audio
from service.config import Settings
from service.handlers.base import InvalidInput
from service.handlers.builtin import builtin_registry
from service.jobs import JobRepository, NewJob
from tests.helpers import wav_base64
from tests.integration.api_server import Api, job_body, running_api

VOXTRAL = {"task_type": "transcribe", "model_profile": "voxtral-small"}
SETTINGS = {
    "AUDIO_URL_ALLOWED_NETWORKS": "10.2.3.0/24",
    "AUDIO_MAX_BYTES": "1024",
    "VOXTRAL_BASE_URL": "http://127.0.0.1:9",  # never called: the worker refuses first
}
REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"audio_url": "file:///etc/passwd"}, "audio_url", "must be an http or https URL, not 'file'"),
    ({"audio_url": "http://127.0.0.1:8080/"}, "audio_url", "is a loopback address"),
    ({"audio_url": "http://169.254.169.254/"}, "audio_url", "link-local (includes cloud metadata)"),
    ({"audio_url": "http://10.2.4.7/a.wav"}, "audio_url", "is a private address"),
    ({"audio_url": "http://[::ffff:192.168.0.1]/"}, "audio_url", "is a private address"),
    # the other spellings of an IPv4 address the resolver reads (inet_aton's)
    ({"audio_url": "http://0x7f000001/"}, "audio_url", "host 0x7f000001 is a loopback address"),
    ({"audio_url": "http://2130706433/"}, "audio_url", "is a loopback address"),
    ({"audio_url": "http://127.1:8080/"}, "audio_url", "is a loopback address"),
    ({"audio_url": "http://0/"}, "audio_url", "is an unspecified address"),
    ({"audio_url": "http://exa mple.com/a.wav"}, "audio_url", "is not a valid host name"),
    ({"audio_url": "https://xn--ls8h.la/a.wav"}, "audio_url", "host is not a valid host name"),
    ({"audio_url": "https://u:p@files.example.com/a.wav"}, "audio_url", "user name or password"),
    ({"audio_base64": "!!!notbase64"}, "audio_base64", "is not valid base64"),
    ({"audio_base64": "data:audio/wav,abc"}, "audio_base64", "data URL must look like"),
    ({"audio_base64": base64.b64encode(bytes(2048)).decode()}, "audio_base64",
     "more than AUDIO_MAX_BYTES=1024"),
]  # fmt: skip


def body(source: dict[str, Any]) -> dict[str, Any]:
    return job_body(input=source, **VOXTRAL)


async def test_audio_sources_the_worker_would_refuse_are_422_at_submission(
    db_url: str,
) -> None:
    async with running_api(db_url, Settings.from_env(SETTINGS)) as api:
        for source, field, words in REFUSED:
            r = await api.client.post("/api/v1/jobs", json=body(source))
            assert r.status_code == 422, (source, r.text)
            assert r.json()["error"] == "validation_error"
            assert [f["field"] for f in r.json()["fields"]] == [f"input.{field}"]
            assert words in r.json()["detail"], (source, r.json())
            batch = {"jobs": [job_body(), job_body(), job_body(), body(source)]}
            r = await api.client.post("/api/v1/jobs/batch", json=batch)
            assert r.status_code == 422, (source, r.text)
            assert [f["field"] for f in r.json()["fields"]] == [f"jobs[3].input.{field}"]
        assert (await api.client.get("/api/v1/jobs")).json()["items"] == []
        # a network AUDIO_URL_ALLOWED_NETWORKS opens, or a name the worker resolves when it runs
        small = {"audio_base64": base64.b64encode(bytes(1024)).decode()}
        for source in ({"audio_url": "http://10.2.3.7/a.wav"},
                       {"audio_url": "http://localhost/a.wav"}, small):  # fmt: skip
            r = await api.client.post("/api/v1/jobs", json=body(source))
            assert r.status_code == 201, (source, r.text)
        await _rows_written_another_way_still_fail_in_the_worker(api)
    hosts = Settings.from_env({**SETTINGS, "AUDIO_URL_ALLOWED_HOSTS": ".example.com"})
    async with running_api(db_url, hosts) as api:
        r = await api.client.post("/api/v1/jobs", json=body({"audio_url": "https://a.test/x"}))
        assert r.status_code == 422, r.text
        assert r.json()["fields"][0]["field"] == "input.audio_url"
        assert "not in AUDIO_URL_ALLOWED_HOSTS (.example.com)" in r.json()["detail"]
        r = await api.client.post(
            "/api/v1/jobs", json=body({"audio_url": "https://a.example.com/x"})
        )
        assert r.status_code == 201, r.text


async def _rows_written_another_way_still_fail_in_the_worker(api: Api) -> None:
    repo: JobRepository = api.app.state.repo
    registry, closeables = builtin_registry(api.app.state.settings)
    handler = registry.lookup("transcribe", "voxtral-small")
    assert handler is not None
    try:
        for source, _, words in REFUSED:
            job, _ = await repo.create(NewJob(owner_service="t", input=source, **VOXTRAL))
            with pytest.raises(InvalidInput, match=re.escape(words)):
                await handler(job)
    finally:
        for c in closeables:
            await c.aclose()


async def test_large_inline_audio_is_checked_off_the_event_loop_with_the_same_answers(
    db_url: str,
) -> None:
    """Past INLINE_AUDIO_ON_LOOP the check runs in a worker thread (decoding 25 MiB holds the
    loop ~75 ms); single creates and batches still refuse and accept as on the loop."""
    settings = Settings.from_env({**SETTINGS, "AUDIO_MAX_BYTES": str(1024 * 1024)})
    good = wav_base64(10.0)  # ~160 KB of WAV, ~213 KB of base64
    assert carries_large_audio({"audio_base64": good}) and not carries_large_audio({"x": good})
    refused = [
        ({"audio_base64": "!" * 100_000}, "is not valid base64"),
        ({"audio_base64": base64.b64encode(bytes(1024 * 1024 + 1)).decode()}, "AUDIO_MAX_BYTES"),
    ]
    async with running_api(db_url, settings) as api:
        for source, words in refused:
            r = await api.client.post("/api/v1/jobs", json=body(source))
            assert r.status_code == 422, r.text
            assert words in r.json()["detail"]
            batch = {"jobs": [body({"audio_base64": good}), body(source)]}
            r = await api.client.post("/api/v1/jobs/batch", json=batch)
            assert r.status_code == 422, r.text
            assert [f["field"] for f in r.json()["fields"]] == ["jobs[1].input.audio_base64"]
        r = await api.client.post("/api/v1/jobs", json=body({"audio_base64": good}))
        assert r.status_code == 201, r.text
        batch = {"jobs": [body({"audio_base64": good})] * 2}
        assert (await api.client.post("/api/v1/jobs/batch", json=batch)).status_code == 201
