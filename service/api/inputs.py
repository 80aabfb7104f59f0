"""Inputs of the built-in task types, checked at submission.

The seed treated ``input`` as the caller's opaque payload, so a malformed chat request was
accepted and only failed minutes later in a worker. Where this deployment's own handlers will
run a job — the seed's routing rule: chat task types on ``LLM_MODEL``, transcription task
types on ``voxtral-small`` — the API reads the input with the handler's own parser and
refuses what the handler would refuse, naming the field (``input.messages[0].role``). Other
(task_type, model_profile) pairs belong to handlers the API does not know and stay opaque.
The worker still checks every input it runs: rows can arrive by other paths.
"""

from __future__ import annotations

from service.config import Settings
from service.handlers.base import InvalidInput
from service.handlers.llm_input import LLM_TASK_TYPES, parse_chat_input
from service.handlers.transcription_input import (
    TRANSCRIPTION_PROFILE,
    TRANSCRIPTION_TASK_TYPES,
    parse_transcription_input,
)
from service.jobs import NewJob


def input_problem(settings: Settings, job: NewJob) -> tuple[str, str] | None:
    """What a built-in handler would refuse in ``job.input``, as (field, message), or None."""
    try:
        if job.task_type in LLM_TASK_TYPES and job.model_profile == settings.llm_model:
            parse_chat_input(job.task_type, job.input)
        elif (
            job.task_type in TRANSCRIPTION_TASK_TYPES and job.model_profile == TRANSCRIPTION_PROFILE
        ):
            parse_transcription_input(job.input)
    except InvalidInput as exc:
        return _named(exc)
    return None


def _named(exc: InvalidInput) -> tuple[str, str]:
    message = str(exc)
    if exc.field is None:
        return "input", message
    # The handler's sentence usually starts with the path it names; say it once.
    if message.startswith(exc.field + " "):
        message = message[len(exc.field) + 1 :]
    return f"input.{exc.field}", message
