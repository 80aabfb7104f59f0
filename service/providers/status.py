"""Provider and infra status probes behind ``GET /api/v1/providers/status`` and
``GET /api/v1/infra/status``.

Why a cache with one shared in-flight probe: a status page is polled by dashboards and people,
often many at once; the GPU servers must not see one ``/v1/models`` per viewer. A snapshot is
reused for ``ttl`` seconds, and callers that arrive while a probe runs wait for that probe
instead of starting their own. Each provider is probed concurrently with a short timeout, so
one dead server costs at most ``timeout`` and never hides the other's status. Answers never
contain a key: base URLs lose their credentials (``redact_url``) and every error text is
scrubbed of the provider's key and URL credentials (``Scrubber``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import msgspec

from service.config import Secret, Settings
from service.logs import reason
from service.providers.bounded import send_bounded
from service.providers.errors import error_for_status
from service.providers.pool import KEEPALIVE_EXPIRY
from service.providers.responses import ModelList
from service.providers.scrub import Scrubber
from service.providers.urls import api_url, redact_url

PROBE_TIMEOUT_S = 3.0
CACHE_TTL_S = 5.0
INFRA_TIMEOUT_S = 5.0
INFRA_STATUS_PATH = "/infra/status"


@dataclass(frozen=True)
class ProviderConfig:
    """One configured (or not) OpenAI-compatible provider."""

    name: str
    base_url: str | None
    model: str
    api_key: Secret | None


def provider_configs(settings: Settings) -> list[ProviderConfig]:
    return [
        ProviderConfig("llm", settings.llm_base_url, settings.llm_model, settings.llm_api_key),
        ProviderConfig(
            "voxtral", settings.voxtral_base_url, settings.voxtral_model, settings.voxtral_key
        ),
    ]


def _now() -> datetime:
    return datetime.now(UTC)


def _transport_error(exc: httpx.HTTPError, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g}s ({type(exc).__name__})"
    return f"unreachable: {reason(exc)}"


class ProviderStatusBoard:
    """Cached, single-flight status of every provider. ``aclose()`` at shutdown."""

    def __init__(
        self,
        providers: list[ProviderConfig],
        *,
        ttl: float = CACHE_TTL_S,
        timeout: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.providers = providers
        self.ttl = ttl
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            # below vLLM's 5 s keep-alive: a probe on a connection it is closing fails
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY),
        )
        self._snapshot: dict[str, Any] | None = None
        self._taken_at = 0.0
        self._inflight: anyio.Event | None = None
        self._last_error: dict[str, tuple[str, datetime]] = {}
        self.probes = 0  # how many probe rounds ran (tests and curiosity)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ProviderStatusBoard:
        return cls(provider_configs(settings), **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def snapshot(self) -> dict[str, Any]:
        """The latest status, probing only when the cached one is older than ``ttl``."""
        asked = time.monotonic()
        while True:
            fresh = self._snapshot is not None and (
                time.monotonic() - self._taken_at < self.ttl or self._taken_at >= asked
            )
            if fresh:
                assert self._snapshot is not None
                return self._snapshot
            if self._inflight is None:
                break
            # Someone is probing: share their answer. If their request was cancelled, the
            # loop comes round and one of the waiters probes instead.
            await self._inflight.wait()
        done = self._inflight = anyio.Event()
        try:
            self._snapshot = await self._probe_all()
            self._taken_at = time.monotonic()
            return self._snapshot
        finally:
            self._inflight = None
            done.set()

    async def _probe_all(self) -> dict[str, Any]:
        self.probes += 1
        results: dict[str, dict[str, Any]] = {}

        async def one(p: ProviderConfig) -> None:
            results[p.name] = await self._probe(p)

        async with anyio.create_task_group() as tg:
            for p in self.providers:
                tg.start_soon(one, p)
        return {
            "checked_at": _now(),
            "providers": [results[p.name] for p in self.providers],
        }

    async def _probe(self, p: ProviderConfig) -> dict[str, Any]:
        if not p.base_url:
            return {"name": p.name, "configured": False, "model": p.model}
        out: dict[str, Any] = {
            "name": p.name,
            "configured": True,
            "base_url": redact_url(p.base_url),
            "model": p.model,
            "reachable": False,
        }
        headers = {"Authorization": f"Bearer {p.api_key.reveal()}"} if p.api_key else {}
        scrub = Scrubber(p.base_url, p.api_key)
        url = api_url(p.base_url, "models")
        started = time.monotonic()
        error: str | None = None
        try:
            with anyio.fail_after(self.timeout):
                response = await send_bounded(self._http, "GET", url, headers=headers)
        except TimeoutError:
            error = f"no answer within {self.timeout:g}s"
        except httpx.HTTPError as exc:
            error = _transport_error(exc, self.timeout)
        else:
            out["reachable"] = True
            out["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
            if response.headers.get(SIMULATED_HEADER) == "true":
                out["simulated"] = True  # no GPU behind it: nobody should take it for one
            failure = error_for_status(p.name, response, scrub)
            if failure is not None:
                error = str(failure)
            else:
                try:
                    listing = msgspec.json.decode(response.content, type=ModelList)
                    served = [m.id for m in listing.data]
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    error = f"{p.name} returned an unreadable model list: {exc}"
                else:
                    out["models"] = served
                    out["model_served"] = p.model in served
                    if p.model not in served:
                        error = (
                            f"the configured model {p.model!r} is not served "
                            f"(served: {', '.join(served) or 'none'})"
                        )
        if error is not None:
            error = scrub(error)
            self._last_error[p.name] = (error, _now())
        out["error"] = error
        if p.name in self._last_error:
            out["last_error"], out["last_error_at"] = self._last_error[p.name]
        return out


SIMULATED_HEADER = "x-simulated"  # every answer of `ai-service simulate-provider` carries it


def infra_url(configured: str) -> str:
    """``INFRA_STATUS_URL`` as typed (``http://ai:9400``) → the sidecar's status endpoint."""
    parts = urlsplit(configured)
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, INFRA_STATUS_PATH, parts.query, ""))
    return configured


async def fetch_infra_status(
    url: str | None, *, timeout: float = INFRA_TIMEOUT_S
) -> Mapping[str, Any]:
    """The sidecar's JSON with ``configured``/``reachable``/``url`` added, or the reason it
    could not be read. Never raises for a sidecar problem: the API answers 200 either way."""
    if not url:
        return {"configured": False}
    target = infra_url(url)
    shown = redact_url(target)
    scrub = Scrubber(target)
    base: dict[str, Any] = {"configured": True, "url": shown}
    started = time.monotonic()
    try:
        with anyio.fail_after(timeout):
            async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
                accept = {"Accept": "application/json"}
                response = await send_bounded(client, "GET", target, headers=accept)
    except TimeoutError:
        return {**base, "reachable": False, "error": f"no answer within {timeout:g}s"}
    except httpx.HTTPError as exc:
        text = scrub(_transport_error(exc, timeout))
        return {**base, "reachable": False, "error": f"the infra sidecar is {text}"}
    latency = round((time.monotonic() - started) * 1000, 1)
    if response.status_code != 200:
        failure = error_for_status("the infra sidecar", response, scrub)
        detail = str(failure) if failure else f"HTTP {response.status_code}"
        return {**base, "reachable": True, "latency_ms": latency, "error": detail}
    try:
        data = msgspec.json.decode(response.content)
    except msgspec.DecodeError as exc:
        return {**base, "reachable": True, "latency_ms": latency,
                "error": f"the infra sidecar answered with invalid JSON: {exc}"}  # fmt: skip
    if not isinstance(data, dict):
        return {**base, "reachable": True, "latency_ms": latency,
                "error": "the infra sidecar answered with JSON that is not an object"}  # fmt: skip
    return {**data, **base, "reachable": True, "latency_ms": latency}
