"""Reading a transcription job's ``input``: which fields count, and what each may hold.

Kept apart from the handler (which needs the HTTP clients and the audio fetcher) because the
API checks the same rules at submission: a job it accepts is one the handler can read. Keys
other than these are the caller's metadata and are ignored. Whether ``audio_url`` may be
fetched is ``audio.AudioPolicy``'s to say: the API asks it at submission what it can answer
without DNS (scheme, host list, a literal address), and the worker asks it again, with the
addresses the host resolves to then, since DNS answers can change until the download.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.handlers.base import InvalidInput

_LANGUAGE = re.compile(r"[a-z]{2}")  # ISO 639-1, as vLLM keys the languages of a model

TRANSCRIPTION_TASK_TYPES = ("transcribe", "transcription")
TRANSCRIPTION_PROFILE = "voxtral-small"
MAX_SPEAKERS = 20


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
        raise InvalidInput("audio_url must be a non-empty string", field="audio_url")
    if b64 is not None and (not isinstance(b64, str) or not b64.strip()):
        raise InvalidInput("audio_base64 must be a non-empty string", field="audio_base64")
    language = data.get("language")
    if isinstance(language, str):
        language = language.strip().lower()  # "EN " is "en"
    if language is not None and not (isinstance(language, str) and _LANGUAGE.fullmatch(language)):
        # vLLM refuses anything but a code of the model's languages, after the audio was
        # fetched and uploaded: say so at submission ("english" used to pass here)
        raise InvalidInput(
            f"language must be an ISO 639-1 code such as 'ru' or 'en', got {language!r:.40}",
            field="language",
        )
    diarization = data.get("diarization", False)
    if diarization is None:
        diarization = False
    if not isinstance(diarization, bool):
        raise InvalidInput(
            f"diarization must be true or false, got {diarization!r}", field="diarization"
        )
    speakers = data.get("num_speakers")
    if speakers is not None and (
        isinstance(speakers, bool)
        or not isinstance(speakers, int)
        or not 1 <= speakers <= MAX_SPEAKERS
    ):
        raise InvalidInput(
            f"num_speakers must be an integer from 1 to {MAX_SPEAKERS}", field="num_speakers"
        )
    return TranscriptionRequest(
        audio_url=url.strip() if isinstance(url, str) else None,
        audio_base64=b64,
        language=language.strip() if isinstance(language, str) and language.strip() else None,
        diarization=diarization,
        num_speakers=speakers,
    )
