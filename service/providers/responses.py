"""The response shapes we read from an OpenAI-compatible server (vLLM), as msgspec Structs.

Why Structs: a 200 with a body we cannot read is a provider fault we want to name precisely
("choices is missing"), not a ``KeyError`` deep in a handler. Unknown fields are ignored so a
newer server version never breaks us.
"""

from __future__ import annotations

import msgspec


class Usage(msgspec.Struct):
    """Token counts; ``None`` where the server sent none. vLLM types ``completion_tokens`` as
    optional and some gateways answer ``"usage": null``: a finished generation must not be
    thrown away (and retried) for a count that only feeds telemetry."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    def total(self) -> int | None:
        if self.total_tokens is not None:
            return self.total_tokens
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens


class ChatMessage(msgspec.Struct):
    role: str = "assistant"
    content: str | None = None


class ChatChoice(msgspec.Struct):
    message: ChatMessage
    finish_reason: str | None = None
    index: int = 0


class ChatCompletion(msgspec.Struct):
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    id: str = ""

    def token_usage(self) -> Usage:
        return self.usage if self.usage is not None else Usage()


class DurationUsage(msgspec.Struct):
    """vLLM's transcription usage: ``{"type": "duration", "seconds": N}`` (N rounded up)."""

    type: str = "duration"
    seconds: float | None = None


class TranscriptSegment(msgspec.Struct):
    start: float
    end: float
    text: str
    id: int = 0


class Transcription(msgspec.Struct):
    """``json`` has ``text`` (+ ``usage`` in vLLM); ``verbose_json`` adds the rest.

    vLLM sends ``duration`` as a string in verbose_json, hence ``float | str``.
    """

    text: str
    usage: DurationUsage | None = None
    language: str | None = None
    duration: float | str | None = None
    segments: list[TranscriptSegment] | None = None

    def duration_seconds(self) -> float | None:
        if self.duration is not None:
            try:
                return float(self.duration)
            except ValueError:
                pass
        if self.usage is not None and self.usage.seconds is not None:
            return float(self.usage.seconds)
        return None


class ModelCard(msgspec.Struct):
    id: str


class ModelList(msgspec.Struct):
    data: list[ModelCard]
