"""Bearer-token guard for ``/api/v1/*``.

Several tokens may be configured (comma-separated ``AI_SERVICE_TOKEN``) so callers can switch
to a new token while the old one still works. Every configured token is compared with
``hmac.compare_digest`` (no early exit on the first match or mismatch), so the response time
does not tell an attacker how much of a guess was right. The token never appears in a log line,
an error body or a response header. Whether auth is on is decided by the setting being set,
not by the token list being non-empty: a set variable that yields no token rejects everything.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard


def token_from_header(value: str | None) -> bytes | None:
    """The credentials of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode()


def token_matches(given: bytes, accepted: Sequence[bytes]) -> bool:
    ok = False
    for candidate in accepted:
        ok |= hmac.compare_digest(given, candidate)
    return ok


def bearer_guard(tokens: Sequence[str], *, required: bool) -> Guard:
    """A guard accepting any of ``tokens`` when ``required``; when not, everything passes.
    Required with no tokens, it fails closed: no request gets through."""
    accepted = tuple(t.encode() for t in tokens)

    # A coroutine on purpose: Litestar runs a plain-function guard in a worker thread, which
    # cost more than the rest of a create request at 32 concurrent clients.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not required:
            return
        given = token_from_header(connection.headers.get("authorization"))
        if given is None:
            raise NotAuthorizedException("an Authorization: Bearer <token> header is required")
        if not token_matches(given, accepted):
            raise NotAuthorizedException("the bearer token is not valid")

    return guard
