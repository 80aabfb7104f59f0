"""The transcription handler: ``transcribe`` / ``transcription`` on profile ``voxtral-small``.

Input: ``audio_url`` (fetched under ``audio.AudioPolicy``) or ``audio_base64`` for small
clips; ``language``; ``diarization`` (bool); ``num_speakers``. Other keys are the caller's
metadata and are ignored. The audio streams download → temporary file → multipart upload to
``{VOXTRAL_BASE_URL}/v1/audio/transcriptions`` with ``response_format=json`` (Voxtral on
vLLM refuses ``verbose_json``), so the answer is ``{"text", "usage": {"seconds"}}`` and the
segments are built here (see ``segments``) — timestamps and speakers are estimates.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from service.handlers.audio import Audio, AudioFetcher, decode_base64_audio
from service.handlers.segments import Span, build_segments
from service.handlers.transcription_input import TranscriptionRequest, parse_transcription_input
from service.jobs.model import Job
from service.providers.client import OpenAIClient
from service.providers.responses import Transcription

# Used only when neither the provider nor the file tells us the audio's length.
WORDS_PER_SECOND = 2.5


def audio_duration(response: Transcription, audio: Audio) -> float | None:
    """Best known length: verbose ``duration``, then the WAV header, then vLLM's
    ``usage.seconds`` (rounded up to whole seconds by vLLM)."""
    if response.duration is not None:
        try:
            return float(response.duration)
        except ValueError:
            pass
    if audio.seconds is not None:
        return round(audio.seconds, 3)
    return response.duration_seconds()


class TranscriptionHandler:
    """A ``Handler``: ``await handler(job)`` returns the transcription result dict."""

    def __init__(
        self,
        client: OpenAIClient,
        fetcher: AudioFetcher,
        *,
        model: str,
        prompt: str = "",
    ) -> None:
        self.client = client
        self.fetcher = fetcher
        self.model = model
        self.prompt = prompt

    @asynccontextmanager
    async def _audio(self, request: TranscriptionRequest) -> AsyncIterator[Audio]:
        if request.audio_base64 is not None:
            yield decode_base64_audio(request.audio_base64, self.fetcher.policy.max_bytes)
            return
        assert request.audio_url is not None
        async with self.fetcher.fetch(request.audio_url) as audio:
            yield audio

    async def __call__(self, job: Job) -> dict[str, Any]:
        request = parse_transcription_input(job.input)
        started = time.monotonic()
        async with self._audio(request) as audio:
            response = await self.client.transcribe(
                audio.upload,
                model=self.model,
                language=request.language,
                prompt=self.prompt or None,
                response_format="json",
            )
        text = response.text.strip()
        duration = audio_duration(response, audio)
        if duration is None:
            duration = round(len(text.split()) / WORDS_PER_SECOND, 3)
        spans = [Span(s.start, s.end, s.text) for s in response.segments or ()]
        segments = build_segments(
            text,
            duration,
            provider_segments=spans,
            diarization=request.diarization,
            num_speakers=request.num_speakers,
        )
        return {
            "text": text,
            "language": request.language or response.language,
            "duration_s": duration,
            "segments": segments,
            "model": self.model,
            "duration_ms": round((time.monotonic() - started) * 1000),
        }
