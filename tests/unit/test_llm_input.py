"""Chat job input: the two accepted forms, passthrough fields, and one clear sentence per error."""

from __future__ import annotations

from typing import Any

import pytest

from service.handlers.base import InvalidInput, InvalidOutput
from service.handlers.llm import check_json
from service.handlers.llm_input import parse_chat_input
from service.handlers.transcription_input import parse_transcription_input

MESSAGES = [
    {"role": "system", "content": "Answer as JSON."},
    {"role": "user", "content": "Classify this text"},
]


def refused(task_type: str, data: Any) -> str:
    with pytest.raises(InvalidInput) as err:
        parse_chat_input(task_type, data)
    assert err.value.category == "invalid_input"
    assert not err.value.retryable
    return str(err.value)


@pytest.mark.parametrize("task_type", ["llm_chat", "chat_completion", "call_analysis"])
def test_messages_form(task_type: str) -> None:
    req = parse_chat_input(task_type, {"messages": MESSAGES, "max_tokens": 256})
    whole = parse_chat_input(task_type, {"user": "x", "max_tokens": 256.0}).max_tokens
    assert whole == 256 and type(whole) is int  # sent to the server as 256
    assert req.messages == MESSAGES
    assert req.max_tokens == 256
    assert req.temperature is None
    assert req.response_format is None
    assert req.wants_json is None


def test_compact_form_builds_messages() -> None:
    req = parse_chat_input("llm_chat", {"system": "Be brief.", "user": "Hi", "temperature": 0})
    assert req.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert req.temperature == 0.0
    assert parse_chat_input("llm_chat", {"user": "Hi"}).messages == [
        {"role": "user", "content": "Hi"}
    ]


def test_response_format_is_passed_through() -> None:
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": {"type": "object", "properties": {}}},
    }
    req = parse_chat_input("call_analysis", {"user": "x", "response_format": schema})
    assert req.response_format == schema
    assert req.wants_json == "json_schema"
    req = parse_chat_input("llm_chat", {"user": "x", "response_format": {"type": "json_object"}})
    assert req.wants_json == "json_object"
    assert (
        parse_chat_input("llm_chat", {"user": "x", "response_format": {"type": "text"}}).wants_json
        is None
    )


def test_text_parts_are_accepted_other_parts_refused() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    req = parse_chat_input("llm_chat", {"messages": [{"role": "user", "content": parts}]})
    assert req.messages[0]["content"] == parts
    msg = refused(
        "llm_chat",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    )
    assert "messages[0].content[0] has type 'image_url'" in msg


def test_call_analysis_ignores_domain_metadata() -> None:
    data = {"user": "Summarise", "call_id": "beeline/42", "phone": "+7900", "top_p": 0.9}
    req = parse_chat_input("call_analysis", data)
    assert req.messages == [{"role": "user", "content": "Summarise"}]


@pytest.mark.parametrize("task_type", ["llm_chat", "chat_completion"])
def test_chat_refuses_unknown_fields_by_name(task_type: str) -> None:
    msg = refused(task_type, {"user": "Hi", "max_token": 5})
    assert "'max_token' is not a chat field" in msg
    assert task_type in msg
    msg = refused(task_type, {"user": "Hi", "top_p": 1, "stop": ["x"]})
    assert "'stop', 'top_p' are not chat fields" in msg
    assert "the model is chosen by model_profile" in refused(
        task_type, {"user": "Hi", "model": "x"}
    )
    # metadata is the one extra key everyone may send.
    assert parse_chat_input(task_type, {"user": "Hi", "metadata": {"k": 1}}).messages


UNNAMED_SCHEMA = {"type": "json_schema", "json_schema": {"schema": {}}}
NUMBER_NAMED_SCHEMA = {"type": "json_schema", "json_schema": {"name": 7, "schema": {}}}
PROPERTIES = {f"p{i}": {"type": "string"} for i in range(3000)}  # ~80 KiB as JSON
HUGE = {"type": "object", "properties": PROPERTIES}
HUGE_SCHEMA = {"type": "json_schema", "json_schema": {"name": "n", "schema": HUGE}}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "input needs either messages"),
        ({"system": "only a system prompt"}, "input needs either messages"),
        ({"user": ""}, "user must be a non-empty string"),
        ({"user": 5}, "user must be a non-empty string"),
        ({"user": "x", "system": ["a"]}, "system must be a string"),
        ({"messages": MESSAGES, "user": "x"}, "both messages and user"),
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": "hi"}, "messages must be a non-empty list"),
        ({"messages": ["hi"]}, "messages[0] must be an object"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role is 'robot'"),
        ({"messages": [{"role": "user"}]}, "messages[0] has no content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "unsupported key"),
        ({"user": "x", "max_tokens": 0}, "max_tokens must be an integer from 1"),
        ({"user": "x", "max_tokens": "256"}, "max_tokens must be an integer"),
        ({"user": "x", "max_tokens": True}, "max_tokens must be an integer"),
        ({"user": "x", "max_tokens": 256.5}, "max_tokens must be an integer"),
        ({"user": "x", "temperature": "hot"}, "temperature must be a number"),
        ({"user": "x", "temperature": 3}, "temperature must be between 0 and 2"),
        ({"user": "x", "response_format": {"type": "yaml"}}, "response_format must be"),
        ({"user": "x", "response_format": "json"}, "response_format must be"),
        ({"user": "x", "response_format": {"type": "json_schema"}}, "needs json_schema"),
        ({"user": "x", "response_format": UNNAMED_SCHEMA}, '"name": "<non-empty string>"'),
        ({"user": "x", "response_format": NUMBER_NAMED_SCHEMA}, "needs json_schema"),
        ({"user": "x", "response_format": HUGE_SCHEMA}, "schema is over 64 KiB as JSON"),
    ],
)
def test_bad_chat_fields_are_named(data: dict[str, Any], expected: str) -> None:
    # The same rules hold for call_analysis: metadata is ignored, chat fields are not.
    assert expected in refused("llm_chat", data)
    assert expected in refused("call_analysis", data)


def test_input_must_be_an_object() -> None:
    assert "input must be a JSON object" in refused("llm_chat", ["hi"])


def test_transcription_input() -> None:
    req = parse_transcription_input(
        {"audio_url": " https://x/a.wav ", "language": "ru", "diarization": True,
         "num_speakers": 2, "call_id": "ignored"}
    )  # fmt: skip
    assert (req.audio_url, req.language, req.diarization, req.num_speakers) == (
        "https://x/a.wav", "ru", True, 2,
    )  # fmt: skip
    assert parse_transcription_input({"audio_base64": "x", "language": " EN"}).language == "en"
    for data, expected in [
        ({}, "exactly one of audio_url or audio_base64"),
        ({"audio_url": "u", "audio_base64": "b"}, "exactly one of"),
        ({"audio_url": ""}, "audio_url must be a non-empty string"),
        ({"audio_base64": "x", "diarization": "yes"}, "diarization must be true or false"),
        ({"audio_base64": "x", "num_speakers": 0}, "num_speakers must be an integer"),
        ({"audio_base64": "x", "language": 7}, "language must be an ISO 639-1 code"),
        ({"audio_base64": "x", "language": "english"}, "got 'english'"),
        ({"audio_base64": "x", "language": "eng"}, "got 'eng'"),
        ({"audio_base64": "x", "language": ""}, "language must be an ISO 639-1 code"),
    ]:
        with pytest.raises(InvalidInput, match=expected):
            parse_transcription_input(data)


def test_json_nested_deeper_than_the_parser_goes_is_invalid_output() -> None:
    """Not an internal error (which would be retried as if the next answer could differ)."""
    with pytest.raises(InvalidOutput, match="not valid JSON"):
        check_json("[" * 100_000 + "]" * 100_000, "json_object", "stop")
    check_json('{"ok": [1, 2]}', "json_object", "stop")
