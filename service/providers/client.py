"""An async client for one OpenAI-compatible inference server (vLLM or the simulator).

Why one long-lived ``httpx.AsyncClient`` per provider: keep-alive connections save a TCP (and
TLS) handshake per job, and the pool limit, sized to the worker's capacity for that provider,
means a worker never opens more connections than it has jobs in flight. Every call has a
total deadline (``timeout``) enforced here rather than httpx's per-read timeouts, because a
non-streaming completion sends nothing until it is done. Failures come out as the handler
error categories (see ``errors.py``); the API key is sent as a header and never appears in an
error, a log line or a span, nor do URL credentials (``Scrubber``) that a server echoes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Self, TypeVar

import anyio
import httpx
import msgspec
from opentelemetry import trace

from service import spans, telemetry, tracing
from service.config import Secret
from service.handlers.base import HandlerError, InvalidOutput, JobTimeout
from service.metrics import GenAiCall
from service.providers.errors import error_for_exception, error_for_status
from service.providers.multipart import AudioUpload, MultipartBody
from service.providers.pool import ShardedClient
from service.providers.responses import ChatCompletion, ModelList, Transcription
from service.providers.scrub import Scrubber
from service.providers.urls import api_url, env_proxies, redact_url, root_url, server_root

T = TypeVar("T")
_tracer = spans.LeanTracer("service.providers")  # one span per job: see service/spans.py
CONNECT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0
DEFAULT_PORTS = {"https": 443, "http": 80}


class OpenAIClient:
    """``chat``, ``transcribe``, ``models`` and ``metrics`` against one base URL."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        api_key: Secret | None = None,
        timeout: float = 300.0,
        max_connections: int = 16,
        provider: str = "vllm",
    ) -> None:
        self.name = name
        self.provider = provider
        self.timeout = timeout
        self._base = server_root(base_url)
        self._scrub = Scrubber(base_url, api_key)
        self.url = redact_url(self._base)
        headers = {"Authorization": f"Bearer {api_key.reveal()}"} if api_key else {}
        host = httpx.URL(self._base)
        self._http = ShardedClient(
            max_connections=max_connections,
            headers=headers,
            timeout=httpx.Timeout(None, connect=min(CONNECT_TIMEOUT_S, timeout)),
            # httpx's client layers only where they do something: a proxy from the
            # environment, or user:password in the URL (sent as basic auth).
            direct=not (host.username or host.password or env_proxies()),
        )
        # httpx leaves a scheme's default port out of ``port``; server.port is the real one.
        port = host.port or DEFAULT_PORTS.get(host.scheme, 0)
        self._server = {"server.address": host.host, "server.port": port}
        self._endpoints: dict[str, tuple[httpx.URL, str]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- calls ---------------------------------------------------------------------------
    async def chat(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: int | None = None,
        temperature: float | None = None,
        response_format: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> ChatCompletion:
        """``POST /v1/chat/completions`` (non-streaming); optional fields are sent only if set."""
        body: dict[str, Any] = {"model": model, "messages": list(messages)}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if response_format is not None:
            body["response_format"] = dict(response_format)
        attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
        if max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = max_tokens
        with self._span(f"chat {model}", attrs) as span, self._measure("chat", model) as call:
            if telemetry.capture_content() and span.is_recording():
                span.set_attribute("gen_ai.input.messages", _json(list(messages)))
            response = await self._send(
                "POST",
                api_url(self._base, "chat/completions"),
                timeout=timeout,
                content=msgspec.json.encode(body),
                headers={"Content-Type": "application/json"},
            )
            result = self._decode(response, ChatCompletion, "chat completion")
            if not result.choices:
                raise InvalidOutput(f"{self.name} returned a chat completion without choices")
            usage = result.token_usage()
            span.set_attributes(
                {
                    "gen_ai.response.model": result.model,
                    "gen_ai.response.id": result.id,
                    "gen_ai.response.finish_reasons": [
                        c.finish_reason or "" for c in result.choices
                    ],
                }
            )
            if usage.prompt_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            if usage.completion_tokens is not None:
                span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            call.usage(result.model, usage.prompt_tokens, usage.completion_tokens)
            if telemetry.capture_content() and span.is_recording():
                out = [{"role": c.message.role, "content": c.message.content}
                       for c in result.choices]  # fmt: skip
                span.set_attribute("gen_ai.output.messages", _json(out))
            return result

    async def transcribe(
        self,
        upload: AudioUpload,
        *,
        model: str,
        language: str | None = None,
        prompt: str | None = None,
        response_format: str = "json",
        temperature: float | None = None,
        timestamp_granularities: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Transcription:
        """``POST /v1/audio/transcriptions`` as multipart, streaming ``upload``.

        Voxtral on vLLM accepts ``json`` and ``text`` only (``verbose_json`` is refused with
        a 400, which surfaces as ``ProviderRejected``).
        """
        fields: list[tuple[str, str]] = [("model", model), ("response_format", response_format)]
        if language:
            fields.append(("language", language))
        if prompt:
            fields.append(("prompt", prompt))
        if temperature is not None:
            fields.append(("temperature", repr(float(temperature))))
        fields.extend(("timestamp_granularities[]", g) for g in timestamp_granularities)
        body = MultipartBody(fields, "file", upload)
        attrs = {"gen_ai.operation.name": "transcribe", "gen_ai.request.model": model}
        with self._span(f"transcribe {model}", attrs) as span, self._measure("transcribe", model):
            response = await self._send(
                "POST",
                api_url(self._base, "audio/transcriptions"),
                timeout=timeout,
                content=body,
                headers=body.headers,
            )
            span.set_attribute("gen_ai.response.model", model)
            if response_format == "text":
                result = Transcription(text=response.text)
            else:
                result = self._decode(response, Transcription, "transcription")
            if telemetry.capture_content() and span.is_recording():
                span.set_attribute("gen_ai.output.messages", _json([{"content": result.text}]))
            return result

    async def models(self, *, timeout: float = PROBE_TIMEOUT_S) -> list[str]:
        """Model ids served (``GET /v1/models``)."""
        response = await self._send("GET", api_url(self._base, "models"), timeout=timeout)
        return [m.id for m in self._decode(response, ModelList, "model list").data]

    async def serves_api_at(self, path: str, *, timeout: float = PROBE_TIMEOUT_S) -> bool:
        """Whether ``POST /v1/<path>`` exists here: an empty request is refused as invalid
        (400, 415, 422), or as unauthorised, by an OpenAI-compatible server, and answered
        404 by anything else (a wrong base URL, an ingress's default backend)."""
        headers = {"content-type": "application/json"}
        try:
            await self._send("POST", api_url(self._base, path), timeout=timeout,
                             headers=headers, content=b"{}")  # fmt: skip
        except HandlerError as exc:
            return exc.status != 404
        return True

    async def metrics(self, *, timeout: float = PROBE_TIMEOUT_S) -> str:
        """The raw Prometheus text of ``GET /metrics`` (vLLM serves it at the root)."""
        response = await self._send("GET", root_url(self._base, "metrics"), timeout=timeout)
        return response.text

    # --- plumbing ------------------------------------------------------------------------
    def _measure(self, operation: str, model: str) -> GenAiCall:
        """gen_ai.client.operation.duration (and token usage) of one call, failures included."""
        return GenAiCall(operation, self.provider, model, str(self._server["server.address"]))

    def _span_attrs(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {"gen_ai.provider.name": self.provider, **self._server, **extra}

    def _span(self, name: str, attrs: Mapping[str, Any]) -> AbstractContextManager[trace.Span]:
        """The GenAI CLIENT span; a failure sets ``error.type`` (the error category) and the
        status, never the exception message (a provider's refusal may quote the prompt)."""
        if not telemetry.enabled():
            return tracing.UNTRACED
        return tracing.current(
            _tracer.start_span(name, trace.SpanKind.CLIENT, self._span_attrs(attrs))
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None = None,
        content: Any = None,
    ) -> httpx.Response:
        limit = self.timeout if timeout is None else timeout
        parsed, shown = self._endpoint(url)
        carrier = dict(headers or {})
        tracing.inject(carrier)  # traceparent to vLLM, so its spans join the job's trace
        try:
            with anyio.fail_after(limit):
                response = await self._http.request(
                    method, parsed, headers=carrier, content=content
                )
        except TimeoutError:
            raise JobTimeout(f"{self.name} at {shown} did not answer within {limit:g}s") from None
        except httpx.HTTPError as exc:
            raise error_for_exception(self.name, shown, exc, self._scrub) from exc
        error = error_for_status(self.name, response, self._scrub)
        if error is not None:
            raise error
        return response

    def _endpoint(self, url: str) -> tuple[httpx.URL, str]:
        """``url`` parsed, and redacted for errors, once per endpoint: httpx parses a URL
        given as a string on every request (~8 µs, a few percent of a chat call's CPU)."""
        found = self._endpoints.get(url)
        if found is None:
            found = self._endpoints[url] = (httpx.URL(url), redact_url(url))
        return found

    def _decode(self, response: httpx.Response, kind: type[T], what: str) -> T:
        try:
            return msgspec.json.decode(response.content, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidOutput(f"{self.name} returned an unreadable {what}: {exc}") from None


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
