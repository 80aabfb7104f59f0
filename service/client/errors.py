"""What a failed request raises, and how an answer is read.

Every answer that is not a 2xx with the service's JSON raises ``ApiError`` — also a redirect
(httpx does not follow it: the base URL is wrong, typically http behind an https ingress) and
a 2xx that is not the expected JSON (the base URL points at something else) — so a caller
handles one exception type for "the service said no", and httpx's own exceptions only for
"no answer at all".
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
import msgspec

from service.api.schemas import ErrorBody
from service.masking import escaped_forms, mask, maskable

T = TypeVar("T")


class ApiError(Exception):
    """A non-2xx answer, decoded from the service's error body. Picklable, so it can cross
    process boundaries (task queues, multiprocessing)."""

    def __init__(self, status_code: int, body: ErrorBody, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code} {body.error}: {body.detail}")
        self.status_code = status_code
        self.body = body
        self.code = body.error
        self.detail = body.detail
        self.fields = [(f.field, f.message) for f in body.fields or []]
        self.status = body.status
        self.job_id = body.job_id
        self.retry_after = retry_after  # seconds, from a 429's or 503's Retry-After

    def __reduce__(self) -> tuple[Any, ...]:
        return (ApiError, (self.status_code, self.body, self.retry_after))


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: not worth parsing for a hint
        return None


def _error_body(response: httpx.Response) -> ErrorBody:
    if response.is_redirect:
        where = response.headers.get("Location", "?")
        return ErrorBody(
            error="redirect",
            detail=f"redirected to {where[:200]} (not followed: use the final address as "
            "the client's base_url)",
        )
    try:
        return msgspec.json.decode(response.content, type=ErrorBody)
    except msgspec.DecodeError:  # a proxy's HTML page, an empty body
        return ErrorBody(error="http_error", detail=response.text[:500] or response.reason_phrase)


def _without_token(body: ErrorBody, response: httpx.Response) -> ErrorBody:
    """``body`` with the request's bearer token masked: a server that echoes what it was
    sent (a debug proxy, an echo endpoint: a wrong ``base_url``) puts it in the body, which
    the exception — logged, pickled to other processes — would otherwise carry."""
    try:
        header = response.request.headers.get("authorization", "")
    except RuntimeError:  # a response built without a request
        return body
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return body
    secrets = maskable(escaped_forms(token.strip()))  # (inside any echo of the header too)
    detail = mask(body.detail, secrets)
    return body if detail == body.detail else msgspec.structs.replace(body, detail=detail)


def decode(type_: type[T], response: httpx.Response) -> T:
    """The answer as ``type_``; raises ``ApiError`` for anything else."""
    if response.status_code >= 300:
        retry_after = _seconds(response.headers.get("Retry-After"))
        body = _without_token(_error_body(response), response)
        raise ApiError(response.status_code, body, retry_after)
    try:
        return msgspec.json.decode(response.content, type=type_, strict=False)
    except msgspec.DecodeError as exc:  # (ValidationError is one)
        detail = f"the answer is not the service's JSON ({exc}); is base_url the ai-service API?"
        raise ApiError(
            response.status_code, ErrorBody(error="invalid_response", detail=detail)
        ) from exc
