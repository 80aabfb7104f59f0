"""Naming the offending part of a request as the caller wrote it, for ``errors.py``.

Why a module of its own: Litestar reports a bad query or path value under the handler's
argument name (``ids``) in msgspec's words for typed values (``expected `int`, got `str```),
which reads as nonsense to a caller who wrote ``?id=…`` or ``?limit=1.5`` (every query value
is a string). And PostgreSQL refuses a NUL character in text and jsonb without saying where
it was; the request still holds it, so the field is found there — only on that error path,
which costs the accepted requests nothing.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.params import ParameterKwarg
from litestar.utils.scope.state import ScopeState

_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false"}
_EXPECTED = re.compile(r"^expected `(int|float|bool)`(?:, got `str`|(?P<bound> [<>]=? \S+))$")


def parameter_name(request: Request[Any, Any, Any], key: str) -> str:
    """The query/path/header name the caller used for the handler argument ``key``."""
    handler = request.scope.get("route_handler")
    field = handler.parsed_fn_signature.parameters.get(key) if handler is not None else None
    kwarg = getattr(field, "kwarg_definition", None)
    if isinstance(kwarg, ParameterKwarg) and kwarg.name:
        return kwarg.name
    return key


def plain_message(message: str) -> str:
    """``expected `int`, got `str``` → ``must be an integer`` (``>= 1`` kept), for values that
    came as text: the caller sent a string either way, what matters is what it must hold."""
    m = _EXPECTED.match(message)
    if m is None:
        return message
    return f"must be {_TYPES[m.group(1)]}{m.group('bound') or ''}"


def nul_field(request: Request[Any, Any, Any]) -> str | None:
    """Where the request holds a NUL character: a query parameter's name, or the path of a
    JSON body value or key (``jobs[3].input.user``); None when it holds none."""
    for name, value in request.query_params.multi_items():
        if "\x00" in value:
            return name
    body = ScopeState.from_scope(request.scope).body
    if not isinstance(body, bytes) or b"\\u0000" not in body:
        return None
    try:
        return _nul_path(msgspec.json.decode(body))
    except (msgspec.DecodeError, RecursionError):
        return None


def _nul_path(document: Any) -> str | None:
    # Depth first in document order; a key is judged when its entry is reached.
    stack: list[tuple[str, Any, bool]] = [("", document, False)]
    while stack:
        path, value, bad_key = stack.pop()
        if bad_key or (isinstance(value, str) and "\x00" in value):
            return path.replace("\x00", "\\u0000") or "body"
        if isinstance(value, dict):
            entries = [(f"{path}.{k}" if path else k, v, "\x00" in k) for k, v in value.items()]
            stack.extend(reversed(entries))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v, False) for i, v in reversed(list(enumerate(value))))
    return None
