"""Secrets masked out of text a server sends back, as that server may have escaped them.

Why a module of its own: the provider layer (``service.providers.scrub``) and the Python
client (``service.client``, which a domain service imports without the server's modules) both
quote what a server answered — an error body, a page from a proxy — and servers that echo a
request (debug proxies, echo endpoints, a base URL pointing at the wrong thing) send the
``Authorization`` header back, percent-encoded, HTML or JSON escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "**********"
# A shorter value is also part of ordinary words: masking it would garble every message.
MIN_SECRET_CHARS = 4


def escaped_forms(secret: str) -> set[str]:
    """``secret`` as a server may quote it back: in a URL, in HTML, in a JSON string."""
    return {
        secret,
        quote(secret, safe=""),
        quote(secret),  # "/" left as is, urllib's default
        quote_plus(secret, safe=""),
        html.escape(secret),
        html.escape(secret, quote=False),
        json.dumps(secret)[1:-1],
    }


def maskable(secrets: Iterable[str]) -> list[str]:
    """The secrets worth masking, longest first (a secret that contains another is masked
    whole)."""
    return sorted((s for s in secrets if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True)


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (from ``maskable``) replaced by ``MASK``."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text
