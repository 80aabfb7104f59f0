"""What a misbehaving inference server can make a worker read: no compressed body (a few KB of
stacked gzip inflated to 4 GB), nothing past ``MAX_RESPONSE_BYTES``, and no header injected
through a caller's media type. Real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import gzip
from typing import Any

import msgspec
import pytest

from service.handlers.base import InvalidOutput, ProviderRejected
from service.providers import bounded
from service.providers.client import OpenAIClient
from service.providers.multipart import AudioUpload, MultipartBody
from tests.helpers import lifespan, serve_asgi

pytestmark = pytest.mark.anyio

COMPLETION = msgspec.json.encode(
    {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
     "choices": [{"index": 0, "finish_reason": "stop",
                  "message": {"role": "assistant", "content": "x" * 4096}}],
     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
)  # fmt: skip
HI = [{"role": "user", "content": "Hi"}]


def provider(
    encoding: bytes | None, body: bytes, seen: list[dict[bytes, bytes]], declared: bool = False
) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        seen.append(dict(scope["headers"]))
        headers = [(b"content-type", b"application/json")]
        if encoding:
            headers.append((b"content-encoding", encoding))
        if declared:  # else uvicorn sends it chunked
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_a_compressed_answer_is_refused_before_it_is_inflated() -> None:
    seen: list[dict[bytes, bytes]] = []
    bomb = gzip.compress(gzip.compress(bytes(64 << 20)))  # 64 MiB in a few hundred bytes
    for direct_url in (True, False):  # the direct transport, and the client (credentials)
        async with serve_asgi(provider(b"gzip, gzip", bomb, seen)) as url:
            base = url if direct_url else url.replace("http://", "http://u:p@")
            async with OpenAIClient("llm", base) as client:
                with pytest.raises(InvalidOutput, match=r"compressed \(gzip, gzip\)"):
                    await client.chat(model="m", messages=HI)
    assert [h.get(b"accept-encoding") for h in seen] == [b"identity", b"identity"]


async def test_an_answer_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[bytes, bytes]] = []
    for declared in (True, False):  # refused from the header, or counted while streaming
        monkeypatch.setattr(bounded, "MAX_RESPONSE_BYTES", len(COMPLETION))
        async with (
            serve_asgi(provider(None, COMPLETION, seen, declared)) as url,
            OpenAIClient("llm", url) as client,
        ):
            assert (await client.chat(model="m", messages=HI)).choices[0].message.content
            monkeypatch.setattr(bounded, "MAX_RESPONSE_BYTES", len(COMPLETION) - 1)
            with pytest.raises(InvalidOutput, match=f"larger than {len(COMPLETION) - 1} bytes"):
                await client.chat(model="m", messages=HI)


async def test_a_media_type_cannot_inject_part_headers() -> None:
    """It comes from the caller (``audio_base64``'s ``data:`` URL)."""
    for given, written in [
        ("audio/wav", "audio/wav"),
        ('audio/wav\r\nContent-Disposition: form-data; name="model"', "application/octet-stream"),
        ("audio/wav; codecs=1", "application/octet-stream"),
    ]:
        body = MultipartBody([("model", "m")], "file", AudioUpload.from_bytes(b"RIFF", "a", given))
        head = b"".join([part async for part in body]).decode()
        assert f"Content-Type: {written}\r\n\r\nRIFF" in head
        assert head.count("Content-Disposition") == 2


async def test_a_redirect_is_refused_naming_where_it_points() -> None:
    """A POST is not followed (a proxy sending http to https, a moved base URL): the job says
    where the base URL should point instead of failing on an unreadable body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        headers = [(b"location", b"https://u:secret@llm.example/v1/chat/completions")]
        await send({"type": "http.response.start", "status": 301, "headers": headers})
        await send({"type": "http.response.body", "body": b"moved"})

    async with serve_asgi(app) as url, OpenAIClient("llm", url) as client:
        with pytest.raises(ProviderRejected, match="HTTP 301 redirecting to https://") as info:
            await client.chat(model="m", messages=HI)
    assert "secret" not in str(info.value) and "llm.example" in str(info.value)
