"""How provider requests leave the worker: straight over a shard's transport, or through
httpx's client when the environment names a proxy or the URL carries credentials.

A small real HTTP server (anyio TCP, HTTP/1.1 keep-alive) records each request's head and
answers a model list, setting a cookie on every answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketStream

from service.providers.client import OpenAIClient

pytestmark = pytest.mark.anyio

BODY = b'{"object": "list", "data": [{"id": "m1", "object": "model"}]}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nset-cookie: session=abc\r\n"
    b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


class Recorder:
    def __init__(self) -> None:
        self.heads: list[str] = []

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            buffer = b""
            while True:
                try:
                    buffer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.heads.append(head.decode("latin-1").lower())
                    await stream.send(ANSWER)


@asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[Recorder, int]]:
    recorder = Recorder()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, recorder.handle)
        yield recorder, port
        tg.cancel_scope.cancel()


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def test_direct_requests_keep_no_cookies_between_jobs() -> None:
    async with (
        recording_server() as (recorder, port),
        OpenAIClient("llm", f"http://127.0.0.1:{port}") as client,
    ):
        with anyio.fail_after(30):
            assert await client.models() == ["m1"]
            assert await client.models() == ["m1"]
    first, second = recorder.heads
    assert first.startswith("get /v1/models http/1.1")
    assert "cookie:" not in second  # one job's cookie never rides on another's request
    assert "user-agent: python-httpx/" in first


async def test_credentials_in_the_url_are_sent_as_basic_auth() -> None:
    async with (
        recording_server() as (recorder, port),
        OpenAIClient("llm", f"http://user:s3cret@127.0.0.1:{port}/v1") as client,
    ):
        with anyio.fail_after(30):
            assert await client.models() == ["m1"]
    assert "authorization: basic dxnlcjpzm2nyzxq=" in recorder.heads[0]  # user:s3cret


async def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async with recording_server() as (recorder, port):
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        async with OpenAIClient("llm", "http://inference.invalid:8000") as client:
            with anyio.fail_after(30):
                assert await client.models() == ["m1"]
    # absolute-form request line: the request went to the proxy, for the inference server
    assert recorder.heads[0].startswith("get http://inference.invalid:8000/v1/models http/1.1")
