"""Reading a chat job's ``input``: which fields count, and what each may hold.

The rule for fields that are not chat fields (decided here, documented in the README):

* ``call_analysis`` inputs may carry the caller's domain metadata (call ids, phone numbers,
  CRM fields) next to the chat fields, as the seed service allowed; such keys are ignored.
* ``llm_chat`` and ``chat_completion`` inputs are chat requests and nothing else, so an
  unknown key is almost always a typo (``max_token``) or a parameter we do not pass on
  (``top_p``); it fails the job as ``invalid_input`` with a sentence naming the key rather
  than being silently dropped. A ``metadata`` object is allowed everywhere and ignored.

The chat fields themselves are validated the same way for all three task types, so a bad
``messages`` or ``max_tokens`` never reaches the GPU server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from service.handlers.base import InvalidInput

LLM_TASK_TYPES = ("llm_chat", "chat_completion", "call_analysis")
CHAT_FIELDS = ("messages", "system", "user", "max_tokens", "temperature", "response_format")
IGNORED_FIELDS = ("metadata",)
METADATA_TASK_TYPES = frozenset({"call_analysis"})
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
MAX_TOKENS_LIMIT = 1_000_000
MAX_MESSAGES = 10_000
# A response schema is compiled into a grammar on the GPU server for every request: a huge one
# costs it more than the generation (schema-driven decoding is a known crash and DoS area of
# inference servers). Real schemas are a few KiB; OpenAI's own limits are smaller still.
MAX_SCHEMA_BYTES = 64 * 1024


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request, ready for ``OpenAIClient.chat``."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    response_format: dict[str, Any] | None = None

    @property
    def wants_json(self) -> str | None:
        """The JSON response_format type asked for, if any."""
        kind = (self.response_format or {}).get("type")
        return kind if kind in ("json_object", "json_schema") else None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_unknown(task_type: str, data: Mapping[str, Any]) -> None:
    if task_type in METADATA_TASK_TYPES:
        return
    unknown = sorted(k for k in data if k not in CHAT_FIELDS and k not in IGNORED_FIELDS)
    if not unknown:
        return
    names = ", ".join(repr(k) for k in unknown)
    noun = "is not a chat field" if len(unknown) == 1 else "are not chat fields"
    hint = " (the model is chosen by model_profile)" if "model" in unknown else ""
    raise InvalidInput(
        f"input field {names} {noun} for {task_type}{hint}; allowed: "
        f"{', '.join(CHAT_FIELDS)}, and 'metadata', which is ignored",
        field=unknown[0],
    )


def _content(where: str, content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise InvalidInput(
            f"{where}.content must be a string or a non-empty list of text parts",
            field=f"{where}.content",
        )
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise InvalidInput(
                f"{at} must be an object like {{'type': 'text', 'text': '...'}}", field=at
            )
        if part.get("type") != "text":
            raise InvalidInput(
                f"{at} has type {part.get('type')!r}; only 'text' parts are supported",
                field=f"{at}.type",
            )
        if not isinstance(part.get("text"), str):
            raise InvalidInput(f"{at}.text must be a string", field=f"{at}.text")
        extra = sorted(set(part) - {"type", "text"})
        if extra:
            raise InvalidInput(
                f"{at} has unsupported key(s): {', '.join(extra)}", field=f"{at}.{extra[0]}"
            )
        parts.append({"type": "text", "text": part["text"]})
    return parts


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(
            "messages must be a non-empty list of {role, content} objects", field="messages"
        )
    if len(raw) > MAX_MESSAGES:
        raise InvalidInput(
            f"messages has {len(raw)} items; at most {MAX_MESSAGES} are accepted",
            field="messages",
        )
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidInput(f"{where} must be an object with role and content", field=where)
        extra = sorted(set(m) - set(MESSAGE_KEYS))
        if extra:
            raise InvalidInput(
                f"{where} has unsupported key(s) {', '.join(extra)}; allowed: role, content, name",
                field=f"{where}.{extra[0]}",
            )
        role = m.get("role")
        if role not in ROLES:
            shown = repr(role) if len(repr(role)) <= 40 else repr(role)[:39] + "…"
            raise InvalidInput(
                f"{where}.role is {shown}; expected one of {', '.join(ROLES)}",
                field=f"{where}.role",
            )
        if "content" not in m:
            raise InvalidInput(f"{where} has no content", field=f"{where}.content")
        msg: dict[str, Any] = {"role": role, "content": _content(where, m["content"])}
        if "name" in m:
            if not isinstance(m["name"], str) or not m["name"]:
                raise InvalidInput(
                    f"{where}.name must be a non-empty string", field=f"{where}.name"
                )
            msg["name"] = m["name"]
        out.append(msg)
    return out


def _compact(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    system, user = data.get("system"), data.get("user")
    if user is None:
        raise InvalidInput(
            "input needs either messages (a list of chat messages) or user (a string)"
        )
    if not isinstance(user, str) or not user.strip():
        raise InvalidInput("user must be a non-empty string", field="user")
    if system is not None and not isinstance(system, str):
        raise InvalidInput("system must be a string", field="system")
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    out.append({"role": "user", "content": user})
    return out


def _response_format(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") not in RESPONSE_FORMATS:
        raise InvalidInput(
            f"response_format must be an object whose type is one of {', '.join(RESPONSE_FORMATS)}",
            field="response_format",
        )
    if raw["type"] == "json_schema":
        spec = raw.get("json_schema")
        # vLLM (as OpenAI) refuses a json_schema without a string name: a 400 for the job.
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("schema"), dict)
            or not isinstance(spec.get("name"), str)
            or not spec["name"]
        ):
            raise InvalidInput(
                "response_format of type json_schema needs json_schema: "
                '{"name": "<non-empty string>", "schema": {...}}',
                field="response_format.json_schema",
            )
        if len(msgspec.json.encode(spec["schema"])) > MAX_SCHEMA_BYTES:
            raise InvalidInput(
                f"response_format.json_schema.schema is over {MAX_SCHEMA_BYTES // 1024} KiB "
                "as JSON",
                field="response_format.json_schema",
            )
    return dict(raw)


def parse_chat_input(task_type: str, data: Any) -> ChatRequest:
    """Validate a chat job's input; raise ``InvalidInput`` with one clear sentence."""
    if not isinstance(data, dict):
        raise InvalidInput("input must be a JSON object")
    _check_unknown(task_type, data)
    if data.get("messages") is not None:
        both = [k for k in ("system", "user") if data.get(k) is not None]
        if both:
            raise InvalidInput(
                f"input has both messages and {' and '.join(both)}; give messages, or "
                "system/user, not both",
                field=both[0],
            )
        messages = _messages(data["messages"])
    else:
        messages = _compact(data)
    max_tokens = data.get("max_tokens")
    if isinstance(max_tokens, float) and max_tokens.is_integer():
        max_tokens = int(max_tokens)  # 256.0: JSON has one number type; vLLM takes it too
    if max_tokens is not None and not (_is_int(max_tokens) and 1 <= max_tokens <= MAX_TOKENS_LIMIT):
        raise InvalidInput(
            f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}, got {max_tokens!r}",
            field="max_tokens",
        )
    temperature = data.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise InvalidInput(
                f"temperature must be a number, got {temperature!r}", field="temperature"
            )
        if not 0.0 <= temperature <= 2.0:
            raise InvalidInput(
                f"temperature must be between 0 and 2, got {temperature!r}", field="temperature"
            )
        temperature = float(temperature)
    return ChatRequest(
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        response_format=_response_format(data.get("response_format")),
    )
