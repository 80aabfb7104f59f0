"""The built-in handlers a worker serves, built from settings.

The seed rule: the LLM handler serves ``llm_chat``, ``chat_completion`` and ``call_analysis``
on ``model_profile == LLM_MODEL`` when ``LLM_BASE_URL`` is set; the transcription handler
serves ``transcribe``/``transcription`` on ``voxtral-small`` when ``VOXTRAL_BASE_URL`` is
set. Each provider gets one pooled client, sized to the jobs a worker runs at once for that
profile, which the caller must ``aclose()`` at shutdown.
"""

from __future__ import annotations

from typing import Protocol

from service.config import Settings
from service.handlers.audio import AudioFetcher, AudioPolicy
from service.handlers.base import (
    CheckUnsupported,
    HandlerRegistry,
    HealthCheck,
    ProviderRejected,
)
from service.handlers.llm import LlmHandler
from service.handlers.llm_input import LLM_TASK_TYPES
from service.handlers.transcription import TranscriptionHandler
from service.handlers.transcription_input import TRANSCRIPTION_PROFILE, TRANSCRIPTION_TASK_TYPES
from service.providers.client import OpenAIClient


class Closeable(Protocol):
    async def aclose(self) -> None: ...


def serves(client: OpenAIClient, model: str, api_path: str) -> HealthCheck:
    """The server answers its model list (with our key) and the list holds ``model``. Without
    a model list (404/405), the API the jobs use (``api_path``) must at least exist there: a
    gateway that lists no models cannot be asked (``CheckUnsupported``), while a wrong base
    URL, where that is 404 too, fails the check."""

    async def check() -> None:
        try:
            served = await client.models()
        except ProviderRejected as exc:
            if exc.status in (404, 405) and await client.serves_api_at(api_path):
                raise CheckUnsupported(f"{client.name} at {client.url}: {exc.loggable}") from exc
            raise
        if model not in served:
            raise ProviderRejected(
                f"{client.name} at {client.url} does not serve {model!r} (it serves: "
                f"{', '.join(served[:10]) or 'nothing'})",
                provider_wide=True,
            )

    return check


def builtin_registry(
    settings: Settings, *, max_connections: int = 16
) -> tuple[HandlerRegistry, list[Closeable]]:
    """The registry of configured built-in handlers and the clients to close at shutdown.

    Connection pools hold ``max(max_connections, claim limit of the profile)`` connections,
    so every job in flight has its own keep-alive connection. Raises ``ConfigError`` for an
    invalid ``AUDIO_URL_ALLOWED_NETWORKS``.
    """
    # Validate before opening anything, so a bad setting leaks no client.
    policy = AudioPolicy.from_settings(settings) if settings.voxtral_base_url else None
    registry = HandlerRegistry()
    closeables: list[Closeable] = []
    if settings.llm_base_url:
        llm = OpenAIClient(
            "llm",
            settings.llm_base_url,
            api_key=settings.llm_api_key,
            timeout=settings.llm_timeout,
            max_connections=max(max_connections, settings.claim_limit(settings.llm_model)),
        )
        closeables.append(llm)
        registry.register(LLM_TASK_TYPES, settings.llm_model, LlmHandler(llm, settings.llm_model))
        registry.set_health_check(
            settings.llm_model, serves(llm, settings.llm_model, "chat/completions")
        )
    if settings.voxtral_base_url and policy is not None:
        pool = max(max_connections, settings.claim_limit(TRANSCRIPTION_PROFILE))
        voxtral = OpenAIClient(
            "voxtral",
            settings.voxtral_base_url,
            api_key=settings.voxtral_key,
            timeout=settings.transcription_timeout,
            max_connections=pool,
        )
        fetcher = AudioFetcher(policy, timeout=settings.transcription_timeout, max_connections=pool)
        closeables += [voxtral, fetcher]
        registry.set_health_check(
            TRANSCRIPTION_PROFILE,
            serves(voxtral, settings.voxtral_model, "audio/transcriptions"),
        )
        registry.register(
            TRANSCRIPTION_TASK_TYPES,
            TRANSCRIPTION_PROFILE,
            TranscriptionHandler(
                voxtral, fetcher, model=settings.voxtral_model, prompt=settings.audio_llm_prompt
            ),
        )
    return registry, closeables
