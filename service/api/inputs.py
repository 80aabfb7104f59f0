"""Inputs of the built-in task types, checked at submission.

The seed treated ``input`` as the caller's opaque payload, so a malformed chat request was
accepted and only failed minutes later in a worker. Where this deployment's own handlers will
run a job — the seed's routing rule: chat task types on ``LLM_MODEL``, transcription task
types on ``voxtral-small`` — the API reads the input with the handler's own parser and
refuses what the handler would refuse, naming the field (``input.messages[0].role``). Other
(task_type, model_profile) pairs belong to handlers the API does not know and stay opaque.

A transcription's audio source is judged by the worker's own code too, as far as that needs
no DNS: ``AudioPolicy.check_url`` (scheme, credentials, port, ``AUDIO_URL_ALLOWED_HOSTS``, a
literal address outside ``AUDIO_URL_ALLOWED_NETWORKS``) and ``decode_base64_audio``. A host
name is resolved only when the job runs — its answer may change until then — and the worker
still checks every input it runs: rows can arrive by other paths.
"""

from __future__ import annotations

from typing import Any

from service.config import Settings
from service.handlers.audio import AudioPolicy, decode_base64_audio
from service.handlers.base import InvalidInput
from service.handlers.llm_input import LLM_TASK_TYPES, parse_chat_input
from service.handlers.transcription_input import (
    TRANSCRIPTION_PROFILE,
    TRANSCRIPTION_TASK_TYPES,
    TranscriptionRequest,
    parse_transcription_input,
)
from service.jobs import NewJob

_policies: dict[tuple[object, ...], AudioPolicy] = {}

# Above this much inline audio a check runs in a worker thread: decoding base64 holds the
# event loop ~3 ms a MiB (75 ms for 25 MiB), and long-polls and claims share that loop.
INLINE_AUDIO_ON_LOOP = 64 * 1024


def carries_large_audio(*inputs: Any) -> bool:
    """Whether checking these inputs decodes more inline audio than the event loop should."""
    return any(
        isinstance(i, dict)
        and isinstance(audio := i.get("audio_base64"), str)
        and len(audio) > INLINE_AUDIO_ON_LOOP
        for i in inputs
    )


def input_problem(settings: Settings, job: NewJob) -> tuple[str, str] | None:
    """What a built-in handler would refuse in ``job.input``, as (field, message), or None."""
    try:
        if job.task_type in LLM_TASK_TYPES and job.model_profile == settings.llm_model:
            parse_chat_input(job.task_type, job.input)
        elif (
            job.task_type in TRANSCRIPTION_TASK_TYPES and job.model_profile == TRANSCRIPTION_PROFILE
        ):
            _check_audio(parse_transcription_input(job.input), settings)
    except InvalidInput as exc:
        return _named(exc)
    return None


def _check_audio(request: TranscriptionRequest, settings: Settings) -> None:
    try:
        if request.audio_base64 is not None:
            decode_base64_audio(request.audio_base64, settings.audio_max_bytes)
        elif request.audio_url is not None:
            audio_policy(settings).check_url(request.audio_url)
    except InvalidInput as exc:  # the worker's sentences name no field: its log needs none
        field = "audio_base64" if request.audio_base64 is not None else "audio_url"
        raise InvalidInput(str(exc), field=field) from None


def audio_policy(settings: Settings) -> AudioPolicy:
    """The workers' ``AudioPolicy`` for these settings, built once per distinct settings
    (``AUDIO_URL_ALLOWED_NETWORKS`` was checked when the settings were read)."""
    key = (
        settings.audio_url_allowed_hosts,
        settings.audio_url_allowed_networks,
        settings.audio_max_bytes,
    )
    if (policy := _policies.get(key)) is None:
        policy = _policies[key] = AudioPolicy.from_settings(settings)
    return policy


def _named(exc: InvalidInput) -> tuple[str, str]:
    message = str(exc)
    if exc.field is None:
        return "input", message
    # The handler's sentence usually starts with the path it names; say it once.
    if message.startswith(exc.field + " "):
        message = message[len(exc.field) + 1 :]
    return f"input.{exc.field}", message
