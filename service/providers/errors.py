"""Turn HTTP outcomes of a provider call into the handler error categories.

Why one place: the retry policy of the whole service hangs on this mapping. A busy or
restarting GPU server (429, 502, 503, 504, refused connection) is worth retrying later, and
when it says how long to wait (``Retry-After``) we pass that on; any other 4xx means our
request is wrong and retrying cannot help, so the provider's own message is kept for the
operator; a timeout is its own category. Messages never contain keys or credentials: every
text a provider sent goes through its ``Scrubber`` before it is shortened, so a cut cannot
leave half a secret behind.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from service.handlers.base import (
    HandlerError,
    InvalidOutput,
    JobTimeout,
    ProviderRejected,
    ProviderUnavailable,
)
from service.providers.bounded import ResponseRefused
from service.providers.scrub import Scrubber
from service.providers.urls import redact_url

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_MESSAGE_CHARS = 500
MAX_RETRY_AFTER_S = 3600.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def provider_message(response: httpx.Response, scrub: Scrubber) -> str:
    """The provider's error text: OpenAI/vLLM ``{"error": {"message"}}``, older vLLM
    ``{"message"}``, FastAPI ``{"detail"}``, or the raw body, scrubbed and shortened."""
    text = ""
    try:
        body: Any = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif isinstance(err, str):
            text = err
        elif body.get("message"):
            text = str(body["message"])
        elif body.get("detail"):
            text = str(body["detail"])
    if not text:
        text = response.text.strip() or response.reason_phrase or "no message"
    text = " ".join(scrub(text).split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text


def _location(response: httpx.Response, scrub: Scrubber) -> str:
    """Where a redirect points, without credentials, query or fragment (tokens live there)."""
    try:
        parts = urlsplit(redact_url(response.headers.get("location", "")))
        shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    except ValueError:  # an unparsable port, say
        shown = ""
    return " ".join(scrub(shown).split())[:MAX_MESSAGE_CHARS] or "?"


def error_for_status(name: str, response: httpx.Response, scrub: Scrubber) -> HandlerError | None:
    """The error a non-2xx response stands for, or ``None`` for success."""
    status = response.status_code
    if status < 300:
        return None
    if status < 400:  # not followed: a POST redirected is a base URL that points elsewhere
        where = _location(response, scrub)
        return ProviderRejected(
            f"{name} answered HTTP {status} redirecting to {where}; set its base URL to the "
            "address it redirects to",
            loggable=f"{name} answered HTTP {status} (a redirect; where to is on the job)",
            provider_wide=True,  # every request goes the same way
        )
    message = provider_message(response, scrub)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    what = f"{name} answered HTTP {status}: {message}"
    bare = f"{name} answered HTTP {status} (its message is on the job)"
    if status in RETRYABLE_STATUSES:
        if status == 408:
            return JobTimeout(what, retry_after=retry_after, loggable=bare)
        # 429/502/503: the server is busy or down for everyone. A 500 or a 504 (a proxy's
        # timeout on a long generation) may be this request's alone.
        return ProviderUnavailable(
            what, retry_after=retry_after, loggable=bare, provider_wide=status in (429, 502, 503)
        )
    if status < 500:
        # 401/403 (the key), 404 (the model or the base URL): every request would fail alike
        return ProviderRejected(
            what, loggable=bare, provider_wide=status in (401, 403, 404), status=status
        )
    # Other 5xx (501, 505, ...): the server failed; a later attempt may land elsewhere.
    return ProviderUnavailable(what, retry_after=retry_after, loggable=bare)


def error_for_exception(name: str, url: str, exc: httpx.HTTPError, scrub: Scrubber) -> HandlerError:
    """The error an httpx transport failure stands for. ``url`` must be redacted already;
    the exception's own text (which may quote the request URL) is scrubbed here."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return ProviderUnavailable(  # (a pool timeout is our own connections all busy)
            f"{name} at {url} did not accept a connection in time ({kind})",
            provider_wide=isinstance(exc, httpx.ConnectTimeout),
        )
    if isinstance(exc, httpx.TimeoutException):
        return JobTimeout(f"{name} at {url} did not answer in time ({kind})")
    if isinstance(exc, httpx.TransportError):
        detail = scrub(str(exc)) or kind
        # Refused or unresolvable: down for everyone. A read/protocol error on one connection
        # (a stream cut, a connection closed as it was reused) may be this request's alone.
        return ProviderUnavailable(
            f"{name} at {url} is unreachable: {detail}",
            provider_wide=isinstance(exc, httpx.ConnectError),
        )
    if isinstance(exc, ResponseRefused):  # the server answered, with what is not read
        return InvalidOutput(f"{name} at {url} answered unreadably: {exc}")
    return ProviderUnavailable(f"{name} at {url} failed: {kind}")
