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
from dataclasses import dataclass
from typing import Any

from service.handlers.audio import Audio, AudioFetcher, decode_base64_audio
from service.handlers.base import InvalidInput
from service.handlers.segments import Span, build_segments
from service.jobs.model import Job
from service.providers.client import OpenAIClient
from service.providers.responses import Transcription

TRANSCRIPTION_TASK_TYPES = ("transcribe", "transcription")
TRANSCRIPTION_PROFILE = "voxtral-small"
MAX_SPEAKERS = 20
# Used only when neither the provider nor the file tells us the audio's length.
WORDS_PER_SECOND = 2.5


@dataclass(frozen=True)
class TranscriptionRequest:
    audio_url: str | None
    audio_base64: str | None
    language: str | None
    diarization: bool
    num_speakers: int | None


def parse_transcription_input(data: Any) -> TranscriptionRequest:
    """Validate a transcription job's input; raise ``InvalidInput`` with one sentence."""
    if not isinstance(data, dict):
        raise InvalidInput("input must be a JSON object")
    url, b64 = data.get("audio_url"), data.get("audio_base64")
    if (url is None) == (b64 is None):
        raise InvalidInput("input needs exactly one of audio_url or audio_base64")
    if url is not None and (not isinstance(url, str) or not url.strip()):
        raise InvalidInput("audio_url must be a non-empty string")
    if b64 is not None and (not isinstance(b64, str) or not b64.strip()):
        raise InvalidInput("audio_base64 must be a non-empty string")
    language = data.get("language")
    if language is not None and (
        not isinstance(language, str) or not 1 <= len(language.strip()) <= 16
    ):
        raise InvalidInput("language must be a language code such as 'ru' or 'en'")
    diarization = data.get("diarization", False)
    if diarization is None:
        diarization = False
    if not isinstance(diarization, bool):
        raise InvalidInput(f"diarization must be true or false, got {diarization!r}")
    speakers = data.get("num_speakers")
    if speakers is not None and (
        isinstance(speakers, bool)
        or not isinstance(speakers, int)
        or not 1 <= speakers <= MAX_SPEAKERS
    ):
        raise InvalidInput(f"num_speakers must be an integer from 1 to {MAX_SPEAKERS}")
    return TranscriptionRequest(
        audio_url=url.strip() if isinstance(url, str) else None,
        audio_base64=b64,
        language=language.strip() if isinstance(language, str) and language.strip() else None,
        diarization=diarization,
        num_speakers=speakers,
    )


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
