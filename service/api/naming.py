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


NUL_SEARCH_VALUES = 500_000  # values searched for a NUL (~0.1 s); beyond, "body" is named


def _nul_path(document: Any) -> str | None:
    """Depth first in document order; a key is judged when its entry is reached. A path is
    spelled only for the value found: spelling one per value made a 10 MB body of 2 million
    small arrays hold the event loop for seconds (every request waiting meanwhile), and
    the search stops after ``NUL_SEARCH_VALUES`` values for the same reason."""
    if isinstance(document, str):
        return "body" if "\x00" in document else None
    trail: list[str | int] = []  # the keys and indexes down to the container being read
    stack: list[Any] = [_children(document)]
    budget = NUL_SEARCH_VALUES
    while stack:
        for key, value in stack[-1]:
            budget -= 1
            if budget < 0:  # a document this large is named as a whole, not searched on
                return "body"
            if (isinstance(key, str) and "\x00" in key) or (
                isinstance(value, str) and "\x00" in value
            ):
                return _spell([*trail, key])
            if isinstance(value, dict | list):
                trail.append(key)
                stack.append(_children(value))
                break
        else:
            stack.pop()
            if trail:
                trail.pop()
    return None


def _children(value: dict[str, Any] | list[Any]) -> Any:
    return iter(value.items()) if isinstance(value, dict) else enumerate(value)


def _spell(trail: list[str | int]) -> str:
    out = ""
    for key in trail:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out.replace("\x00", "\\u0000") or "body"
