"""The LLM handler: ``llm_chat``, ``chat_completion`` and ``call_analysis`` on ``LLM_MODEL``.

All three are one chat completion against the configured OpenAI-compatible server; they
differ only in which extra input keys they tolerate (see ``llm_input``). When the caller asked
for JSON (``response_format`` json_object/json_schema) the content must parse, otherwise the
job fails as ``invalid_output`` — a caller that asked for JSON should never have to guess.
A generation the server itself cut off (vLLM answers HTTP 200 with ``finish_reason: "abort"``
when its engine stops, sleeps or drops a running request) is not a result: it is retried as
``provider_unavailable`` rather than stored as a completed job holding half an answer.
"""

from __future__ import annotations

import json
import time
from typing import Any

from service.handlers.base import InvalidOutput, ProviderUnavailable
from service.handlers.llm_input import parse_chat_input
from service.jobs.model import Job
from service.providers.client import OpenAIClient

# finish reasons that mean the server, not the model, ended the answer (vLLM's ``abort``; a
# gateway may pass an ``error`` through)
CUT_BY_SERVER = frozenset({"abort", "error"})


class LlmHandler:
    """A ``Handler``: ``await handler(job)`` returns the job's result dict."""

    def __init__(self, client: OpenAIClient, model: str) -> None:
        self.client = client
        self.model = model

    async def __call__(self, job: Job) -> dict[str, Any]:
        request = parse_chat_input(job.task_type, job.input)
        started = time.monotonic()
        response = await self.client.chat(
            model=self.model,
            messages=request.messages,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            response_format=request.response_format,
        )
        duration_ms = round((time.monotonic() - started) * 1000)
        choice = response.choices[0]
        if choice.finish_reason in CUT_BY_SERVER:
            raise ProviderUnavailable(
                f"the model server stopped the generation early (finish_reason="
                f"{choice.finish_reason!r}: an engine shutdown, sleep or abort)"
            )
        content = choice.message.content
        if content is None:
            raise InvalidOutput(
                f"the model returned no content (finish_reason={choice.finish_reason!r})"
            )
        if request.wants_json:
            check_json(content, request.wants_json, choice.finish_reason)
        usage = response.token_usage()
        return {
            "content": content,
            "model": response.model,
            "usage": {  # a count the server did not send is null, not 0
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total(),
            },
            "finish_reason": choice.finish_reason,
            "duration_ms": duration_ms,
        }


def check_json(content: str, kind: str, finish_reason: str | None) -> None:
    """Raise ``InvalidOutput`` unless ``content`` is one JSON document."""
    try:
        json.loads(content)
    except (ValueError, RecursionError) as exc:  # (nested deeper than the parser goes)
        hint = (
            "; finish_reason=length: max_tokens cut the answer short"
            if finish_reason == "length"
            else ""
        )
        raise InvalidOutput(
            f"response_format asked for {kind} but the model's content is not valid JSON "
            f"({exc}){hint}"
        ) from None
