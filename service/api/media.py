"""Request bodies are JSON: a body sent with any other media type, or none, is refused (415).

The API parsed any body as JSON whatever its declared type. A web page may send a body to
another origin without a CORS preflight as ``text/plain``, form-encoded, multipart, or with no
content type at all (a ``Blob`` or ``ArrayBuffer`` body); so with ``AI_SERVICE_TOKEN`` unset
(the seed's default) a page an internal user opened could cancel every job. JSON media types
always need a preflight cross-site, which the API does not grant. Refusing the rest also tells
a ``curl -d`` caller who forgot ``-H 'content-type: application/json'`` what is wrong. A POST
without a body (``/jobs/{id}/retry``) needs no content type. A compressed body
(``Content-Encoding``) is refused the same way: the server does not decode it.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.api.errors import ApiError
from service.http_limits import has_body


def is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def json_body_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    if connection.scope.get("method") not in ("POST", "PUT", "PATCH") or not has_body(
        connection.scope["headers"]
    ):
        return
    declared = connection.headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if not is_json(media_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            "request bodies are JSON: send Content-Type: application/json "
            f"(got {media_type or 'none'})",
        )
    encoding = connection.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # read as JSON it was "invalid character (byte 0)"
        raise ApiError(
            415,
            "unsupported_media_type",
            f"request bodies are sent uncompressed (got Content-Encoding: {encoding[:40]})",
        )
