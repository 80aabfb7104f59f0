# ruff: noqa: RUF001  (Russian sample lines are meant to be Cyrillic)
"""Synthetic model output: deterministic text, JSON that fits the requested schema, transcripts.

Why deterministic: tests and benchmarks compare runs, so the same request gets the same
answer. Token counts are estimated as ~4 characters per token, which is what matters for the
simulated latency and the usage numbers, not the exact tokenizer.
"""

from __future__ import annotations

import hashlib
import io
import math
import wave
from typing import Any

import msgspec

_ANSWER = (
    "the call was about a delivery that arrived late and the customer asked for a "
    "refund while the operator offered a discount on the next order"
)
_WORDS = tuple(_ANSWER.split(" "))
_EN_LINES = (
    "Hello, thank you for calling, how can I help you today?",
    "Hi, I ordered a sofa two weeks ago and it still has not arrived.",
    "I am sorry to hear that, could you give me the order number please?",
    "Yes, it is four five seven two one.",
    "Thank you, I see the delivery was moved to Friday.",
    "That is too late, I need it before the weekend.",
    "I understand, let me check whether we can deliver on Thursday.",
    "Okay, I will wait.",
)
_RU_LINES = (
    "Здравствуйте, спасибо за звонок, чем могу помочь?",
    "Добрый день, я заказал диван две недели назад, и его до сих пор не привезли.",
    "Мне очень жаль, назовите, пожалуйста, номер заказа.",
    "Да, четыре пять семь два один.",
    "Спасибо, вижу, что доставку перенесли на пятницу.",
    "Это слишком поздно, он нужен мне до выходных.",
    "Понимаю, давайте я проверю, можно ли доставить в четверг.",
    "Хорошо, я подожду.",
)
WORDS_PER_SECOND = 2.5
FALLBACK_BYTES_PER_SECOND = 16_000  # ~128 kbit/s, when the audio is not a WAV file


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def text_answer(tokens: int) -> str:
    """A plain answer of ``tokens`` words (one word ≈ one token here)."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(max(1, tokens))).capitalize() + "."


def example_from_schema(schema: Any, depth: int = 0) -> Any:
    """A small value that satisfies common JSON Schemas (types, enum, const, properties)."""
    if not isinstance(schema, dict) or depth > 8:
        return "simulated"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_from_schema(schema[key][0], depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: example_from_schema(v, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [example_from_schema(schema.get("items", {}), depth + 1)] * max(
            1, int(schema.get("minItems", 1))
        )
    return {"integer": 1, "number": 0.5, "boolean": True, "null": None}.get(kind, "simulated")


def json_answer(response_format: dict[str, Any], last_user: str) -> str:
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        value = example_from_schema(spec.get("schema", {}) if isinstance(spec, dict) else {})
    else:
        value = {"simulated": True, "echo": last_user[:80]}
    return msgspec.json.encode(value).decode()


def audio_seconds(data: bytes) -> float:
    """Duration of a WAV file from its header; otherwise an estimate from the size."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate = w.getframerate()
            if rate > 0:
                return float(w.getnframes()) / float(rate)
    except (wave.Error, EOFError):
        pass
    return len(data) / FALLBACK_BYTES_PER_SECOND


def transcript(data: bytes, seconds: float, language: str | None) -> str:
    """Dialogue-like text of about ``WORDS_PER_SECOND`` words per second of audio."""
    lines = _RU_LINES if (language or "").lower().startswith("ru") else _EN_LINES
    start = int.from_bytes(hashlib.sha256(data).digest()[:2], "big") % len(lines)
    want = max(1, round(seconds * WORDS_PER_SECOND))
    out: list[str] = []
    words = 0
    i = start
    while words < want:
        line = lines[i % len(lines)]
        out.append(line)
        words += len(line.split())
        i += 1
    return " ".join(out)
