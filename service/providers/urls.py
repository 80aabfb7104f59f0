"""Endpoint URLs of an OpenAI-compatible server, whatever form the operator typed.

Why: ``LLM_BASE_URL`` is written both as ``http://gpu:8000`` and ``http://gpu:8000/v1`` in the
wild (the OpenAI SDK wants the latter, vLLM docs show both). We keep the server *root* and add
``/v1/...`` ourselves, so both spellings reach the same endpoints, and ``/metrics`` and
``/health`` (which vLLM serves at the root, not under ``/v1``) are reachable too.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit
from urllib.request import getproxies


def server_root(base_url: str) -> str:
    """``http://h:8000/v1/`` → ``http://h:8000``; a path prefix before ``/v1`` is kept."""
    url = base_url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def api_url(base_url: str, path: str) -> str:
    """The URL of an OpenAI API path such as ``chat/completions`` under ``/v1``."""
    return f"{server_root(base_url)}/v1/{path.lstrip('/')}"


def root_url(base_url: str, path: str) -> str:
    """The URL of a server path outside ``/v1`` (``metrics``, ``health``)."""
    return f"{server_root(base_url)}/{path.lstrip('/')}"


def redact_url(url: str) -> str:
    """The URL without user/password and with its query's values masked (``?token=***``), safe
    for logs, errors and status pages: a token in a query string is as secret as a password."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None and not parts.query:
        return url if not parts.fragment else urlunsplit(parts._replace(fragment=""))
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port is not None else "")
    query = "&".join(_masked(field) for field in parts.query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _masked(field: str) -> str:
    """``key=value`` → ``key=***``; a bare value (``?sk-123``) may itself be the secret."""
    if not field:
        return ""
    key, eq, _ = field.partition("=")
    return f"{key}=***" if eq else "***"


def env_proxies() -> bool:
    """Whether ``HTTP_PROXY``, ``HTTPS_PROXY`` or ``ALL_PROXY`` (any case) is set: httpx's
    client would then route requests through a proxy (``NO_PROXY`` is left to httpx)."""
    return bool({"http", "https", "all"} & getproxies().keys())
