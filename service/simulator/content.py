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


MAX_SCHEMA_NODES = 10_000  # values an example may hold: a 100-byte schema asked for 8e9


class SchemaError(ValueError):
    """The schema cannot be followed (vLLM's guided decoding refuses it: a 400)."""


def example_from_schema(schema: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """A small value that satisfies common JSON Schemas (types, enum, const, properties)."""
    budget = [MAX_SCHEMA_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise SchemaError(f"the schema asks for a value of more than {MAX_SCHEMA_NODES} parts")
    if not isinstance(schema, dict) or depth > 8:
        return "simulated"
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        if not isinstance(schema["enum"], list) or not schema["enum"]:
            raise SchemaError("enum must be a non-empty array")
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_from_schema(schema[key][0], depth + 1, budget)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        if not isinstance(props, dict):
            raise SchemaError("properties must be an object")
        return {k: example_from_schema(v, depth + 1, budget) for k, v in props.items()}
    if kind == "array":
        count = schema.get("minItems", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise SchemaError("minItems must be a non-negative integer")
        item = example_from_schema(schema.get("items", {}), depth + 1, budget)
        budget[0] -= max(0, count - 1) * _size(item)
        if budget[0] < 0:
            raise SchemaError(f"the schema asks for a value of more than {MAX_SCHEMA_NODES} parts")
        return [item] * max(1, count)
    return {"integer": 1, "number": 0.5, "boolean": True, "null": None}.get(kind, "simulated")


def _size(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_size(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_size(v) for v in value)
    return 1


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
            rate, frame = w.getframerate(), w.getsampwidth() * w.getnchannels()
            if rate > 0 and frame > 0:
                # the frames the file holds, not the header's claim: 44 bytes claiming 4 GB
                # of 1 Hz audio made a transcript of 4e9 seconds
                frames = min(w.getnframes(), len(data) // frame)
                return float(frames) / float(rate)
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
