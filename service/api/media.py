"""Request bodies are JSON: a body declared as a browser form or plain text is refused (415).

Those three media types (``text/plain``, ``application/x-www-form-urlencoded``,
``multipart/form-data``) are the ones a web page may send to another origin without a CORS
preflight. The API parsed any body as JSON whatever its declared type, so with
``AI_SERVICE_TOKEN`` unset (the seed's default) a page an internal user opened could cancel
every job with a ``text/plain`` POST. Refusing them also tells a ``curl -d`` caller who forgot
``-H 'content-type: application/json'`` what is wrong. A missing content type is allowed.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.api.errors import ApiError

FORM_LIKE = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


async def json_body_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    if connection.scope.get("method") not in ("POST", "PUT", "PATCH"):
        return
    declared = connection.headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type in FORM_LIKE:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"request bodies are JSON: send Content-Type: application/json (got {media_type})",
        )
