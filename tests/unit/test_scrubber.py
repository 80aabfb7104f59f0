"""A provider that quotes a key back escaped (percent-encoded in a URL it echoes, HTML- or
JSON-escaped in its error page) must not get it past the scrubber: the exact key was masked,
``sk-a%2Bb%2Fc...`` was not."""

from __future__ import annotations

import html
import json
from urllib.parse import quote, quote_plus

from service.config import Secret
from service.providers.scrub import MASK, Scrubber

KEY = 'sk-a+b/c&d<e>f"g h'
PASSWORD = "p&ss<w>rd+/"


def test_a_key_or_password_quoted_back_escaped_is_masked() -> None:
    scrub = Scrubber(f"http://user:{quote(PASSWORD, safe='')}@gpu:8000/v1", Secret(KEY))
    for secret in (KEY, PASSWORD):
        for form in (
            secret,
            quote(secret, safe=""),
            quote(secret),
            quote_plus(secret, safe=""),
            html.escape(secret),
            html.escape(secret, quote=False),
            json.dumps(secret)[1:-1],
        ):
            text = scrub(f"401: bad credential {form} in request")
            assert text == f"401: bad credential {MASK} in request", (form, text)
