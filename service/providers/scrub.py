"""Credentials out of every text a provider (or the infra sidecar) sends back.

Why: a provider's error body is quoted into job error messages and status pages, and some
servers echo what they were sent — the ``Authorization`` header, the URL. Our requests carry a
provider's credentials in three forms: the API key as a bearer token, and a base URL's
``user:password`` both inside the URL and as the base64 of a ``Basic`` header (httpx sends
URL credentials that way). One ``Scrubber`` per provider removes all three, whichever one a
server echoes, and every error text about that provider goes through it — also as a server
may have escaped them on the way back (percent-encoded, HTML or JSON escaped).
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote

from service.config import Secret
from service.masking import MASK, escaped_forms, mask, maskable

__all__ = ["MASK", "Scrubber"]


def _userinfo(url: str) -> str:
    """``user:password`` of ``scheme://user:password@host/...`` (empty without one). Parsed
    by hand: ``urlsplit`` raises on some malformed hosts, and a setting may be malformed."""
    rest = url.strip().partition("://")[2]
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return netloc.rpartition("@")[0]


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


class Scrubber:
    """Removes one provider's credentials from a text: ``scrub(text)``."""

    __slots__ = ("_secrets", "_userinfo")

    def __init__(self, url: str | None = None, api_key: Secret | None = None) -> None:
        secrets: set[str] = set()
        info = _userinfo(url) if url else ""
        self._userinfo = f"{info}@" if info else ""
        if info:
            user, _, password = info.partition(":")
            for u, p in ((user, password), (unquote(user), unquote(password))):
                token = _basic(u, p)
                secrets |= {token, token.rstrip("=")}
                if p:  # a user name alone is no secret
                    secrets |= escaped_forms(p) | {f"{u}:{p}"}
        if api_key:
            secrets |= escaped_forms(api_key.reveal())
        self._secrets = maskable(secrets)

    def __call__(self, text: str) -> str:
        if self._userinfo:
            text = text.replace(self._userinfo, "")  # http://user:pw@host → http://host
        return mask(text, self._secrets)
