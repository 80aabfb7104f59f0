"""SSRF and size safety of audio downloads, against real HTTP servers on 127.0.0.1.

The audio server here is real (uvicorn on a real socket); what varies is the fetcher's
policy: by default loopback is refused, and tests that need to reach the local server opt in
with ``allowed_networks=127.0.0.1/32`` — exactly what an operator does for internal storage.
"""

from __future__ import annotations

import base64
import gzip
import ipaddress
import struct
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest

from service.config import ConfigError, Settings
from service.handlers.audio import AudioFetcher, AudioPolicy, decode_base64_audio, parse_networks
from service.handlers.base import InputUnavailable, InvalidInput
from tests.helpers import free_port, lifespan, serve_asgi, wav_bytes

pytestmark = pytest.mark.anyio

LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.1/32"),)


AUDIO = wav_bytes(3.0)
ROUTES: dict[str, tuple[int, list[tuple[bytes, bytes]], list[bytes]]] = {
    "/call.wav": (200, [(b"content-type", b"audio/wav")], [AUDIO]),
    "/big-declared": (200, [(b"content-length", b"5000")], [b"\x00" * 5000]),
    "/big-chunked": (200, [], [b"\x00" * 600] * 5),  # no Content-Length: counted while streaming
    "/to-metadata": (302, [(b"location", b"http://169.254.169.254/latest/meta-data/")], [b""]),
    "/to-private": (302, [(b"location", b"http://10.1.2.3:8080/call.wav")], [b""]),
    "/to-loopback-2": (307, [(b"location", b"http://127.0.0.2/call.wav")], [b""]),
    "/to-file": (302, [(b"location", b"file:///etc/passwd")], [b""]),
    "/to-call": (301, [(b"location", b"/call.wav")], [b""]),
    "/loop": (302, [(b"location", b"/loop")], [b""]),
    "/missing": (404, [], [b"not here"]),
    "/login": (200, [(b"content-type", b"text/html; charset=utf-8")], [b"<html>Sign in</html>"]),
    "/expired": (200, [(b"content-type", b"application/problem+json")], [b'{"title":"gone"}']),
    "/to-bad-url": (302, [(b"location", b"http://[::1/x.wav")], [b""]),
    "/busy": (503, [(b"retry-after", b"9")], [b"busy"]),
    # 64 MiB of zeros in ~70 bytes: inflated, a few KB of this took a worker to 6 GB
    "/gzip-bomb": (
        200,
        [(b"content-type", b"audio/wav"), (b"content-encoding", b"gzip, gzip")],
        [gzip.compress(gzip.compress(bytes(64 << 20)))],
    ),
}


async def audio_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if await lifespan(scope, receive, send):
        return
    status, headers, chunks = ROUTES.get(scope["path"], (404, [], [b""]))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for i, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})


def audio_server() -> AbstractAsyncContextManager[str]:
    return serve_asgi(audio_app)


@asynccontextmanager
async def fetcher(**policy: Any) -> AsyncIterator[AudioFetcher]:
    f = AudioFetcher(AudioPolicy(**policy), timeout=60)
    try:
        yield f
    finally:
        await f.aclose()


async def refusal(f: AudioFetcher, url: str) -> str:
    with pytest.raises(InvalidInput) as err:
        async with f.fetch(url):
            pass
    assert err.value.category == "invalid_input"
    assert not err.value.retryable
    return str(err.value)


async def test_allowed_download_streams_the_audio() -> None:
    async with audio_server() as base, fetcher(allowed_networks=LOOPBACK_ONLY) as f:
        async with f.fetch(f"{base}/call.wav") as audio:
            assert audio.upload.size == len(AUDIO)
            assert audio.upload.filename == "call.wav"
            assert audio.upload.content_type == "audio/wav"
            assert audio.seconds == pytest.approx(3.0)
            got = b"".join([c async for c in audio.upload.chunks()])
            assert got == AUDIO
            # The source can be replayed (an upload retried on the same file).
            assert b"".join([c async for c in audio.upload.chunks()]) == AUDIO
        # A same-host redirect is followed.
        async with f.fetch(f"{base}/to-call") as audio:
            assert audio.upload.size == len(AUDIO)


async def test_loopback_is_refused_by_default(caplog: pytest.LogCaptureFixture) -> None:
    async with audio_server() as base, fetcher() as f:
        msg = await refusal(f, f"{base}/call.wav")
        assert "127.0.0.1 is a loopback address" in msg
        assert "AUDIO_URL_ALLOWED_NETWORKS" in msg
        port = base.rsplit(":", 1)[1]
        # A name is resolved and the address actually dialled is checked.
        with caplog.at_level("WARNING", logger="ai_service.handlers.audio"):
            msg = await refusal(f, f"http://localhost:{port}/call.wav")
        assert "host 'localhost' resolves to a loopback address" in msg
        assert "127.0.0.1" not in msg and "::1" not in msg  # internal DNS answers stay in the log
        assert "'localhost' resolves to 127.0.0.1" in caplog.text or "::1" in caplog.text


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.0.0.5/a.wav", "private"),
        ("http://172.16.3.4/a.wav", "private"),
        ("https://192.168.1.10/a.wav", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local (includes cloud metadata)"),
        ("http://100.64.0.1/a.wav", "non-public"),
        ("http://0.0.0.0/a.wav", "unspecified"),
        ("http://[::1]/a.wav", "loopback"),
        ("http://[fd00::1]/a.wav", "private"),
        ("http://[fe80::1]/a.wav", "link-local (includes cloud metadata)"),
        ("http://[::ffff:127.0.0.1]/a.wav", "loopback"),
        ("http://[64:ff9b::a00:1]/a.wav", "private"),
        ("http://224.0.0.1/a.wav", "multicast"),
    ],
)
async def test_private_ranges_are_refused(url: str, kind: str) -> None:
    async with fetcher() as f:
        assert f" {kind} address; only public addresses may be fetched" in await refusal(f, url)


async def test_allowed_networks_are_exact() -> None:
    async with fetcher(allowed_networks=LOOPBACK_ONLY) as f:
        assert "127.0.0.2 is a loopback address" in await refusal(f, "http://127.0.0.2/a.wav")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/to-metadata", "redirect target host 169.254.169.254 is a link-local"),
        ("/to-private", "redirect target host 10.1.2.3 is a private address"),
        ("/to-loopback-2", "redirect target host 127.0.0.2 is a loopback address"),
        ("/to-file", "redirect target must be an http or https URL, not 'file'"),
        ("/loop", "redirected more than 5 times"),
    ],
)
async def test_redirects_are_rechecked(path: str, expected: str) -> None:
    async with audio_server() as base, fetcher(allowed_networks=LOOPBACK_ONLY) as f:
        assert expected in await refusal(f, base + path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/big-declared", "audio_url is 5000 bytes, larger than AUDIO_MAX_BYTES=2048"),
        ("/big-chunked", "audio_url is larger than AUDIO_MAX_BYTES=2048 bytes"),
        ("/gzip-bomb", "Content-Encoding 'gzip, gzip'; only uncompressed transfers"),
    ],
)
async def test_oversized_audio_is_refused(path: str, expected: str) -> None:
    async with (
        audio_server() as base,
        fetcher(allowed_networks=LOOPBACK_ONLY, max_bytes=2048) as f,
    ):
        assert expected in await refusal(f, base + path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///etc/passwd", "must be an http or https URL, not 'file'"),
        ("ftp://example.com/a.wav", "must be an http or https URL, not 'ftp'"),
        ("gopher://example.com/", "must be an http or https URL"),
        ("http://user:pw@example.com/a.wav", "must not contain a user name or password"),
        ("http:///a.wav", "has no host"),
        ("not a url", "must be an http or https URL"),
        ("http://example.com:70000/a.wav", "has port 70000, outside 1-65535"),
        ("https://xn--ls8h.la/call.wav", "host is not a valid host name"),  # IDNA refuses it
        ("https://xn--.com/a.wav", "host is not a valid host name"),
    ],
)
async def test_bad_urls_are_refused(url: str, expected: str) -> None:
    async with fetcher() as f:
        assert expected in await refusal(f, url)


async def test_host_allow_list() -> None:
    policy = {"allowed_hosts": ("audio.example.com", ".records.example.org")}
    async with audio_server() as base, fetcher(**policy, allowed_networks=LOOPBACK_ONLY) as f:
        msg = await refusal(f, f"{base}/call.wav")
        assert "host '127.0.0.1' is not in AUDIO_URL_ALLOWED_HOSTS" in msg
    p = AudioPolicy(allowed_hosts=policy["allowed_hosts"])
    assert p.host_allowed("audio.example.com")
    assert p.host_allowed("AUDIO.example.com.")
    assert p.host_allowed("eu.records.example.org")
    assert not p.host_allowed("records.example.org.evil.com")
    assert not p.host_allowed("evilaudio.example.com")


async def test_http_errors_of_the_audio_host() -> None:
    async with audio_server() as base, fetcher(allowed_networks=LOOPBACK_ONLY) as f:
        assert "audio_url answered HTTP 404" in await refusal(f, f"{base}/missing")
        # a page instead of audio is the caller's link, not a GPU's refusal; not retried
        assert "Content-Type text/html, not audio" in await refusal(f, f"{base}/login")
        assert "application/problem+json, not audio" in await refusal(f, f"{base}/expired")
        assert "redirected to a malformed URL" in await refusal(f, f"{base}/to-bad-url")
        with pytest.raises(InputUnavailable) as err:
            async with f.fetch(f"{base}/busy"):
                pass
        assert err.value.retry_after == 9.0
        # the caller's storage, not the inference server: its own category, retried
        assert err.value.category == "input_unavailable" and err.value.retryable
        with pytest.raises(InputUnavailable, match="could not be fetched"):  # nothing listens
            async with f.fetch(f"http://127.0.0.1:{free_port()}/call.wav"):
                pass


def test_base64_audio_is_capped_and_validated() -> None:
    good = base64.b64encode(AUDIO).decode()
    audio = decode_base64_audio(good, len(AUDIO))
    assert audio.upload.size == len(AUDIO)
    assert audio.seconds == pytest.approx(3.0)
    data_url = decode_base64_audio("data:audio/wav;base64," + good, len(AUDIO))
    assert data_url.upload.content_type == "audio/wav"
    # MIME-style line breaks (base64.encodebytes, `base64` the command) at exactly the cap:
    # the size estimate counted them and refused the clip
    wrapped = decode_base64_audio(base64.encodebytes(AUDIO).decode(), len(AUDIO))
    assert wrapped.upload.size == len(AUDIO)
    # a recorder's stale RIFF size with a LIST chunk first made the wave module raise
    # RuntimeError, which failed the job as internal; the duration is just unknown
    pcm = bytes(32000)
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    info = b"INFOISFT" + struct.pack("<I", 4) + b"rec\0"
    chunks = fmt + b"LIST" + struct.pack("<I", len(info)) + info
    odd = b"RIFF" + struct.pack("<I", 36) + b"WAVE" + chunks + b"data" + struct.pack("<I", 32000)
    stale = decode_base64_audio(base64.b64encode(odd + pcm).decode(), len(odd) + len(pcm))
    assert stale.seconds is None and stale.upload.size == len(odd) + len(pcm)
    for text, expected in [
        (good, "more than AUDIO_MAX_BYTES=1000"),
        ("!!not base64!!", "not valid base64"),
        ("data:audio/wav,abc", "data URL must look like"),
    ]:
        with pytest.raises(InvalidInput, match=expected):
            decode_base64_audio(text, 1000)


def test_settings_feed_the_policy() -> None:
    s = Settings.from_env(
        {"AUDIO_URL_ALLOWED_HOSTS": "a.example.com, .b.example.com",
         "AUDIO_URL_ALLOWED_NETWORKS": "10.2.3.0/24, 10.9.9.9", "AUDIO_MAX_BYTES": "4096"}
    )  # fmt: skip
    policy = AudioPolicy.from_settings(s)
    assert policy.allowed_hosts == ("a.example.com", ".b.example.com")
    assert ipaddress.ip_address("10.2.3.77") in policy.allowed_networks[0]
    assert policy.max_bytes == 4096
    assert Settings.from_env({}).audio_max_bytes == 25 * 1024 * 1024
    # compared as URL hosts are: lower case, no final dot
    odd = Settings.from_env({"AUDIO_URL_ALLOWED_HOSTS": "Files.Example.COM., .Rec.example.org"})
    assert odd.audio_url_allowed_hosts == ("files.example.com", ".rec.example.org")
    assert AudioPolicy.from_settings(odd).host_allowed("files.example.com")
    # an entry no URL's host can equal refused every audio_url job, silently: now at start
    for bad in ("https://files.example.com", "files.example.com:443", "*.example.com",
                "bad host", "files.example.com/audio"):  # fmt: skip
        with pytest.raises(ConfigError, match=r"AUDIO_URL_ALLOWED_HOSTS=.* is invalid"):
            Settings.from_env({"AUDIO_URL_ALLOWED_HOSTS": f"ok.example.com, {bad}"})
    with pytest.raises(
        ConfigError, match=r"AUDIO_URL_ALLOWED_NETWORKS='10\.0\.0\.0/33' is invalid"
    ):
        parse_networks(["10.0.0.0/33"])
    # read with the settings, so every process (the API checks audio_url too) refuses it
    with pytest.raises(
        ConfigError, match=r"AUDIO_URL_ALLOWED_NETWORKS='10\.2\.3\.0/24, 10\.0\.0\.0/33' is"
    ):
        Settings.from_env({"AUDIO_URL_ALLOWED_NETWORKS": "10.2.3.0/24, 10.0.0.0/33"})


async def test_a_download_over_its_time_is_a_timeout() -> None:
    """A stalled audio host is a ``timeout`` (retryable), as the issue names it: dashboards
    tell slow audio hosts from a GPU server that is down."""
    never = anyio.Event()

    async def stalled(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await lifespan(scope, receive, send):
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"RIFF", "more_body": True})
        await never.wait()  # the rest never comes

    async with serve_asgi(stalled) as base:
        f = AudioFetcher(AudioPolicy(allowed_networks=LOOPBACK_ONLY), timeout=0.3)
        try:
            with pytest.raises(InputUnavailable, match=r"did not finish within 0\.3s") as err:
                async with f.fetch(f"{base}/call.wav"):
                    pass
        finally:
            never.set()
            await f.aclose()
    assert err.value.category == "input_unavailable" and err.value.retryable
