"""Provider credentials never come back out: a server that echoes what it was sent (the
``Authorization`` header, decoded ``user:password``) into its error body must not put the API
key, a base URL's password or its Basic credential into a job error or a status page."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest

from service.config import Secret, Settings
from service.handlers.base import HandlerError, ProviderRejected, ProviderUnavailable
from service.providers.client import OpenAIClient
from tests.helpers import lifespan, serve_asgi
from tests.integration.api_server import running_api

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
MASK = "**********"
KEY = "sk-echo-SECRET-key"
# "%40" is "@": httpx sends the decoded password, so both spellings must be scrubbed.
USERINFO, DECODED = "llmuser:llmpass%40SECRET", "llmuser:llmpass@SECRET"
BASIC = base64.b64encode(DECODED.encode()).decode()
# Prefixes too: a message is shortened to 500 characters, and a cut through a secret must
# not leave its first half behind.
FORBIDDEN = ("SECRET", "llmpass", KEY[:10], BASIC[:10])


async def echo_auth(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Refuses every request, quoting its Authorization header (and the decoded Basic
    credential) like a careless proxy. Under ``/pad`` the quote starts past the 500th
    character of the message, where it is shortened; ``/busy`` answers 503 instead of 401."""
    if await lifespan(scope, receive, send):
        return
    auth = dict(scope["headers"]).get(b"authorization", b"").decode()
    scheme, _, value = auth.partition(" ")
    decoded = base64.b64decode(value).decode() if scheme == "Basic" else ""
    pad = "x" * 470 + " " if scope["path"].startswith("/pad") else ""
    text = f"{pad}bad auth {auth} (user {decoded}) for {auth}"
    body = msgspec.json.encode({"error": {"message": text}})
    status = 503 if scope["path"].startswith("/busy") else 401
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def with_userinfo(url: str, path: str = "") -> str:
    return url.replace("http://", f"http://{USERINFO}@") + path


def assert_clean(text: str) -> None:
    for secret in FORBIDDEN:
        assert secret not in text, (secret, text)


async def test_job_errors_never_quote_credentials() -> None:
    async with serve_asgi(echo_auth) as url:
        cases: list[tuple[str, Secret | None, type[HandlerError]]] = [
            (with_userinfo(url), None, ProviderRejected),
            (with_userinfo(url, "/pad"), None, ProviderRejected),
            (with_userinfo(url, "/busy"), None, ProviderUnavailable),
            (url, Secret(KEY), ProviderRejected),
            (f"{url}/pad", Secret(KEY), ProviderRejected),
        ]
        for base_url, key, kind in cases:
            async with OpenAIClient("llm", base_url, api_key=key) as client:
                with pytest.raises(kind) as err:
                    await client.chat(model="qwen2.5-14b", messages=HI)
            message = str(err.value)
            assert "HTTP" in message and "bad auth" in message, message  # the echo arrived
            assert_clean(message)
            assert MASK in message  # masked where it was, not dropped with the body


async def test_status_pages_never_quote_credentials(db_url: str) -> None:
    async with serve_asgi(echo_auth) as url:
        settings = Settings.from_env(
            {"LLM_BASE_URL": with_userinfo(url), "VOXTRAL_BASE_URL": url,
             "VOXTRAL_API_KEY": KEY, "INFRA_STATUS_URL": with_userinfo(url), "DB_POOL_SIZE": "4"}
        )  # fmt: skip
        async with running_api(db_url, settings) as api:
            providers = await api.client.get("/api/v1/providers/status")
            infra = await api.client.get("/api/v1/infra/status")
    assert providers.status_code == 200 and infra.status_code == 200
    for r in (providers, infra):
        assert_clean(r.text)
    llm, voxtral = providers.json()["providers"]
    assert llm["error"].startswith("llm answered HTTP 401: bad auth Basic **********")
    assert llm["base_url"] == url
    assert voxtral["error"].startswith("voxtral answered HTTP 401: bad auth Bearer **********")
    assert infra.json()["error"].startswith("the infra sidecar answered HTTP 401: bad auth Basic")
