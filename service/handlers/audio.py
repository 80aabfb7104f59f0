"""Fetching a job's audio safely: the worker must not become a proxy into our network.

``audio_url`` comes from callers, and the worker runs inside the cluster, next to the
database, the GPU servers and the cloud metadata endpoint. So (each refusal is an
``InvalidInput`` that says what was refused and which setting would allow it):

* only ``http``/``https`` URLs, without user:password;
* when ``AUDIO_URL_ALLOWED_HOSTS`` is set, the host must be listed (``.example.com`` allows
  subdomains);
* every address a host resolves to must be public (``is_global``, not multicast); loopback,
  private, link-local (cloud metadata 169.254.169.254), shared and reserved ranges are
  refused unless inside ``AUDIO_URL_ALLOWED_NETWORKS``. The check runs in the connection
  layer on the address actually dialled, so DNS rebinding between check and connect cannot
  slip past it, and it applies again to every redirect hop;
* redirects are followed by hand (at most 5), each target re-checked like the original;
* the body is capped at ``AUDIO_MAX_BYTES`` (refused up front from ``Content-Length``, and
  while streaming when the header lies or is missing).

The audio is streamed to a spooled temporary file (memory up to 1 MiB, disk beyond) and
streamed from there into the upload, so no job holds a whole recording in memory and several
jobs in flight overlap their I/O. Environment proxies are ignored: they would dial for us
and bypass the address check.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import logging
import re
import socket
import wave
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import anyio
import httpcore
import httpx

from service.config import IPNetwork, Settings, parse_networks
from service.handlers.base import InputUnavailable, InvalidInput
from service.logs import reason
from service.providers.errors import parse_retry_after
from service.providers.multipart import AudioUpload

log = logging.getLogger("ai_service.handlers.audio")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
SPOOL_BYTES = 1024 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or ``None`` if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _kind(embedded)
    for attr, name in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local (includes cloud metadata)"),
        ("is_private", "private"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, attr):
            return name
    return None if ip.is_global else "non-public"


@dataclass(frozen=True)
class AudioPolicy:
    """Which URLs and addresses audio may come from, and how big it may be."""

    allowed_hosts: tuple[str, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = 25 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> AudioPolicy:
        return cls(
            allowed_hosts=tuple(h.lower().rstrip(".") for h in settings.audio_url_allowed_hosts),
            allowed_networks=parse_networks(settings.audio_url_allowed_networks),
            max_bytes=settings.audio_max_bytes,
        )

    def host_allowed(self, host: str) -> bool:
        if not self.allowed_hosts:
            return True
        h = host.lower().rstrip(".")
        return any(h == a or (a.startswith(".") and h.endswith(a)) for a in self.allowed_hosts)

    def check_url(self, url: str, *, what: str = "audio_url") -> httpx.URL:
        try:
            parsed = httpx.URL(url)
            parsed.host  # noqa: B018 (decoded here: a bad IDNA label raises UnicodeError)
        except (httpx.InvalidURL, TypeError):
            raise InvalidInput(f"{what} is not a valid URL") from None
        except UnicodeError:  # xn--ls8h.la, xn--.com: an A-label IDNA refuses to decode
            raise InvalidInput(f"{what} host is not a valid host name") from None
        if parsed.scheme not in ("http", "https"):
            raise InvalidInput(f"{what} must be an http or https URL, not {parsed.scheme!r}")
        if not parsed.host:
            raise InvalidInput(f"{what} has no host")
        if parsed.userinfo:
            raise InvalidInput(f"{what} must not contain a user name or password")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise InvalidInput(f"{what} has port {parsed.port}, outside 1-65535")
        if not self.host_allowed(parsed.host):
            raise InvalidInput(
                f"{what} host {parsed.host!r} is not in AUDIO_URL_ALLOWED_HOSTS "
                f"({', '.join(self.allowed_hosts)})"
            )
        literal = _literal(parsed.host)
        if literal is not None:
            self.check_address(parsed.host, literal, what=what)
        elif not _HOST_NAME.fullmatch(parsed.raw_host):
            raise InvalidInput(f"{what} host {parsed.host[:100]!r} is not a valid host name")
        return parsed

    def check_address(self, host: str, ip: IPAddress, *, what: str = "audio_url") -> None:
        kind = _kind(ip)
        if kind is None or any(ip in net for net in self.allowed_networks):
            return
        article = "an" if kind[0] in "aeiou" else "a"
        if _is_literal(host):
            shown = f"host {host} is"
        else:  # the address goes to the log only: callers need not learn internal DNS answers
            shown = f"host {host!r} resolves to"
            log.warning("%s host %r resolves to %s, %s %s address: refused",
                        what, host, ip, article, kind)  # fmt: skip
        raise InvalidInput(
            f"{what} {shown} {article} {kind} address; only public addresses may be "
            "fetched (add its network to AUDIO_URL_ALLOWED_NETWORKS to allow it)"
        )


# A DNS name as it goes on the wire (an IDN is already xn-- encoded by httpx): letters,
# digits, hyphens, dots, and the underscore some internal names carry. A space, a percent or
# another byte here would be refused by the resolver only when the job runs.
_HOST_NAME = re.compile(rb"[A-Za-z0-9_.-]+")
# What inet_aton (and so getaddrinfo) reads as an IPv4 address besides the dotted quad:
# 2130706433, 0x7f000001, 127.1, 0177.0.0.1, 0 (0.0.0.0).
_INET_ATON = re.compile(r"[0-9a-fA-FxX.]+")


def _literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form the resolver accepts, or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _INET_ATON.fullmatch(host) and any(c.isdigit() for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _is_literal(host: str) -> bool:
    return _literal(host) is not None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves names itself and dials only addresses the policy allows."""

    def __init__(self, policy: AudioPolicy, inner: httpcore.AsyncNetworkBackend | None = None):
        self._policy = policy
        self._inner = inner or httpcore.AnyIOBackend()
        self.what = "audio_url"

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        # Every address must pass: otherwise a name with one public and one private record
        # would let the connection attempt order decide.
        for a in addresses:
            self._policy.check_address(host, ipaddress.ip_address(a.split("%")[0]))
        error: Exception = httpcore.ConnectError(f"{host} has no addresses")
        for a in addresses:
            try:
                return await self._inner.connect_tcp(
                    a, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise InvalidInput("audio_url may not reach a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool dialling through ``GuardedBackend``."""

    def __init__(self, policy: AudioPolicy, max_connections: int) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            network_backend=GuardedBackend(policy),
        )


def wav_seconds(head: bytes, size: int) -> float | None:
    """Duration of WAV audio from its first bytes and total size; ``None`` if not WAV."""
    try:
        with wave.open(io.BytesIO(head)) as w:
            rate, frame = w.getframerate(), w.getsampwidth() * w.getnchannels()
            frames = w.getnframes()
    except (wave.Error, EOFError, ValueError, RuntimeError):  # RuntimeError: odd chunk sizes
        return None
    if rate <= 0 or frame <= 0:
        return None
    # Streamed WAVs often carry a placeholder length; the file size is the honest bound.
    frames = min(frames, max(0, size - 44) // frame)
    return float(frames) / float(rate)


def _filename(url: httpx.URL) -> str:
    name = unquote(url.path.rsplit("/", 1)[-1])
    return "".join(ch for ch in name if ch.isprintable() and ch not in '"\\/')[:200] or "audio"


@dataclass(frozen=True)
class Audio:
    """Audio ready for upload, plus what we could learn about it on the way."""

    upload: AudioUpload
    seconds: float | None


class AudioFetcher:
    """Downloads ``audio_url`` under ``AudioPolicy``; one pooled client per worker."""

    def __init__(
        self, policy: AudioPolicy, *, timeout: float = 600.0, max_connections: int = 16
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            transport=_GuardedTransport(policy, max_connections),
            follow_redirects=False,
            timeout=httpx.Timeout(60.0, connect=10.0),
            headers={"User-Agent": "ai-service-worker"},
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @asynccontextmanager
    async def fetch(self, url: str) -> AsyncIterator[Audio]:
        """Download ``url`` into a temporary file; yield it as an upload; delete it after."""
        async with anyio.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            try:
                with anyio.fail_after(self.timeout):
                    final, size, content_type, head = await self._download(url, spool)
            except TimeoutError:
                raise InputUnavailable(
                    f"downloading audio_url did not finish within {self.timeout:g}s"
                ) from None

            async def chunks() -> AsyncIterator[bytes]:
                await spool.seek(0)
                while chunk := await spool.read(CHUNK):
                    yield chunk

            upload = AudioUpload(_filename(final), content_type, size, chunks)
            yield Audio(upload, wav_seconds(head, size))

    async def _download(
        self, url: str, spool: anyio.SpooledTemporaryFile[bytes]
    ) -> tuple[httpx.URL, int, str, bytes]:
        current = self.policy.check_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self._http.stream("GET", current, headers=_IDENTITY) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        current = self.policy.check_url(
                            str(current.join(location)), what="audio_url redirect target"
                        )
                        continue
                    self._check_status(response)
                    return await self._save(current, response, spool)
            except httpx.TimeoutException:
                raise InputUnavailable("audio_url did not answer in time") from None
            except httpx.RemoteProtocolError as exc:
                if str(exc).startswith(_BAD_LOCATION):  # httpx parses it even unfollowed
                    raise InvalidInput(f"audio_url redirected to a malformed URL ({exc})") from None
                raise InputUnavailable(f"audio_url could not be fetched: {reason(exc)}") from None
            except httpx.TransportError as exc:
                raise InputUnavailable(f"audio_url could not be fetched: {reason(exc)}") from None
        raise InvalidInput(f"audio_url redirected more than {MAX_REDIRECTS} times")

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 300:
            return
        if status in (408, 429) or status >= 500:
            retry = parse_retry_after(response.headers.get("retry-after"))
            raise InputUnavailable(f"audio_url answered HTTP {status}", retry_after=retry)
        raise InvalidInput(f"audio_url answered HTTP {status}; the audio cannot be fetched")

    async def _save(
        self, url: httpx.URL, response: httpx.Response, spool: anyio.SpooledTemporaryFile[bytes]
    ) -> tuple[httpx.URL, int, str, bytes]:
        cap = self.policy.max_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise InvalidInput(
                f"audio_url is {int(declared)} bytes, larger than AUDIO_MAX_BYTES={cap}"
            )
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if _is_document(content_type):
            # a login, error or "link expired" page answered 200: no GPU should be asked
            # to transcribe it, nor its refusal be blamed on the GPU server
            raise InvalidInput(
                f"audio_url answered with Content-Type {content_type}, not audio (a web page "
                "or an error document?)"
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Asked for identity: a compressed answer is refused, not inflated. A few KB of
            # stacked gzip inflate to gigabytes before any size check could run.
            raise InvalidInput(
                f"audio_url answered with Content-Encoding {encoding!r}; only uncompressed "
                "transfers are accepted"
            )
        size, head = 0, b""
        async for chunk in response.aiter_raw(CHUNK):
            size += len(chunk)
            if size > cap:
                raise InvalidInput(f"audio_url is larger than AUDIO_MAX_BYTES={cap} bytes")
            if len(head) < CHUNK:
                head += chunk[: CHUNK - len(head)]
            await spool.write(chunk)
        if size == 0:
            raise InvalidInput("audio_url returned an empty body")
        return url, size, content_type or "application/octet-stream", head


_IDENTITY = {"Accept-Encoding": "identity"}
_BAD_LOCATION = "Invalid URL in location header"  # httpx's message: a permanent fault, not retried


def _is_document(content_type: str) -> bool:
    """Whether a downloaded body's type says it is text (HTML, JSON, XML), never audio."""
    kind, _, sub = content_type.partition("/")
    return kind == "text" or (
        kind == "application" and (sub in ("json", "xml") or sub.endswith(("+json", "+xml")))
    )


def decode_base64_audio(text: str, max_bytes: int) -> Audio:
    """``audio_base64`` (plain or a ``data:`` URL) as an upload, capped like downloads."""
    content_type = "application/octet-stream"
    payload = text.strip()
    if payload.startswith("data:"):
        header, sep, payload = payload.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidInput("audio_base64 data URL must look like data:audio/wav;base64,...")
        content_type = header[5:].removesuffix(";base64") or content_type
    payload = "".join(payload.split())  # MIME line breaks: not counted in the estimate
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise InvalidInput(f"audio_base64 decodes to more than AUDIO_MAX_BYTES={max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("audio_base64 is not valid base64") from None
    if not data:
        raise InvalidInput("audio_base64 is empty")
    if len(data) > max_bytes:
        raise InvalidInput(f"audio_base64 decodes to more than AUDIO_MAX_BYTES={max_bytes} bytes")
    upload = AudioUpload.from_bytes(data, "audio", content_type)
    return Audio(upload, wav_seconds(data[:CHUNK], len(data)))
