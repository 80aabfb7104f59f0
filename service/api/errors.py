"""One error shape for every 4xx/5xx: ``{"error": code, "detail": sentence, "fields": [...]}``.

Why one mapping function instead of per-route try/except: handlers stay thin and raise domain
errors (``JobNotFound``, ``StateConflict`` …); this module is the single place that decides the
status code and the stable ``error`` code callers branch on. Unexpected exceptions are logged
with their traceback but answered with a generic sentence, so nothing internal (SQL, a token
from a header, a connection string) can leak into a response.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    InternalServerException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from service.api.naming import nul_field, parameter_name, plain_message
from service.api.schemas import ErrorBody, FieldError
from service.db import DatabaseUnavailable, IntegrityViolation, StatementTimeout, ValueRefused
from service.http_limits import STATUS_CODES
from service.jobs import IdempotencyConflict, JobNotFound, StateConflict
from service.logs import reason

log = logging.getLogger("ai_service.api")
CLIENT_LEFT = "client disconnected prematurely"  # Litestar's words, reading a request body

WWW_AUTHENTICATE = 'Bearer realm="ai-service"'


class ApiError(Exception):
    """An error a handler raises on purpose, with its status and stable code."""

    def __init__(
        self,
        status_code: int,
        code: str,
        detail: str,
        *,
        fields: list[FieldError] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.fields = fields


def invalid(field: str, message: str, *, code: str = "validation_error") -> ApiError:
    """A 422 naming one field."""
    return ApiError(
        422, code, f"{field}: {message}", fields=[FieldError(field=field, message=message)]
    )


_PARAMETERS = ("query", "path", "header", "cookie")
_MSGSPEC_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def _clean_path(path: str) -> str:
    return path[1:] if path.startswith(".") else path


def _msgspec_field(message: str, prefix: str = "") -> FieldError:
    """``Expected `int`, got `str` - at `$.jobs[3].priority``` → field ``jobs[3].priority``."""
    m = _MSGSPEC_AT.match(message.strip())
    msg, path = (m.group("msg"), m.group("path") or "") if m else (message, "")
    field = _clean_path(path)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", msg)
    if unknown:
        field = f"{field}.{unknown.group(1)}" if field else unknown.group(1)
        msg = "unknown field"
    missing = re.match(r"Object missing required field `([^`]+)`", msg)
    if missing:
        field = f"{field}.{missing.group(1)}" if field else missing.group(1)
        msg = "required field is missing"
    if prefix:
        field = f"{prefix}.{field}" if field and not field.startswith("[") else prefix + field
    return FieldError(field=field or "body", message=_lower_first(msg))


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s else s


def _validation_fields(
    exc: ValidationException, request: Request[Any, Any, Any]
) -> list[FieldError]:
    out: list[FieldError] = []
    extra: Any = exc.extra
    items = extra if isinstance(extra, list) else []
    for item in items:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid value"))
        key = str(item.get("key", "") or "")
        source = getattr(item.get("source"), "value", item.get("source")) or ""
        fe = _msgspec_field(message)
        if source in _PARAMETERS:  # named as the caller wrote it, its value judged as text
            key = parameter_name(request, key)
            fe = FieldError(field=fe.field, message=plain_message(fe.message))
        # Litestar gives the location as ``key`` (``jobs[1].priority``; ``data`` is the whole
        # body); an unknown or missing field's own name is in the message.
        base = "" if key in ("", "data") else key
        if fe.field == "body":
            field = base or ("body" if source == "body" or key == "data" else key or "body")
        else:
            field = f"{base}.{fe.field}" if base else fe.field
        out.append(FieldError(field=field, message=fe.message))
    return out


def error_response(
    status_code: int,
    code: str,
    detail: str,
    *,
    fields: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[ErrorBody]:
    body = ErrorBody(error=code, detail=detail, fields=fields or None, **extra)
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def _sentence(fields: list[FieldError], fallback: str) -> str:
    if not fields:
        return fallback
    first = fields[0]
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return f"{first.field}: {first.message}{more}"


def _is_data_error(exc: Exception) -> bool:
    """A value PostgreSQL cannot store (a NUL character in text or jsonb, a timestamp out of
    range): SQLSTATE class 22 "data exception", or psycopg refusing to send it (its
    ``DataError``; psycopg itself is imported only under service/db). The caller's data: 422."""
    if isinstance(exc, ValueRefused):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith("22"):
        return True
    return any(c.__name__ == "DataError" for c in type(exc).__mro__)


class _Throttle:
    """At most one line a second per (status, code); the next line says how many were left
    out. In a database outage every request is a 503: at 20 requests a second the log got 100
    lines a second (then two per answer), growing with traffic."""

    INTERVAL = 1.0

    def __init__(self) -> None:
        self._last: dict[tuple[int, str], tuple[float, int]] = {}  # -> (logged at, left out)

    def admit(self, key: tuple[int, str]) -> int | None:
        """None: leave this line out; else how many were left out since the last one."""
        now = time.monotonic()
        at, left_out = self._last.get(key, (float("-inf"), 0))
        if now - at < self.INTERVAL:
            self._last[key] = (at, left_out + 1)
            return None
        self._last[key] = (now, 0)
        return left_out


_throttle = _Throttle()


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """The app's only exception handler (registered for ``Exception``). Every error answer
    gets one log line — method, path, status, code and the fields named, never headers,
    query values or bodies — since uvicorn's access log is off: without it a caller refused
    (a wrong token, a bad body) or a 503 left no trace unless tracing was on. Warnings (5xx,
    401, 403) are throttled per status and code (``_Throttle``); a 503 names the database's
    reason, which the answer does not."""
    response = _error_for(request, exc)
    body = response.content
    status = response.status_code or 500
    level = logging.WARNING if status >= 500 or status in (401, 403) else logging.INFO
    if not (log.isEnabledFor(level) and isinstance(body, ErrorBody)):
        return response
    left_out = _throttle.admit((status, body.error)) if level == logging.WARNING else 0
    if left_out is None:
        return response
    named = f" ({', '.join(f.field for f in body.fields)})" if body.fields else ""
    why = f": {reason(exc)}" if isinstance(exc, DatabaseUnavailable) else ""
    more = f" (and {left_out} more like it in the last seconds, not logged)" if left_out else ""
    log.log(
        level,
        "%s %s answered %d %s%s%s%s",
        request.method,
        request.url.path,
        status,
        body.error,
        named,
        why,
        more,
        extra={"http_status": status, "error": body.error},
    )
    return response


def _error_for(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if isinstance(exc, InternalServerException) and exc.detail == CLIENT_LEFT:
        # The connection closed while the body was read (the client left, or the body
        # deadline in service/http_limits.py ended it): no one to answer, nothing was done,
        # not a server error. nginx's 499; the line says so at INFO.
        return error_response(
            499, "client_closed_request", "the connection closed before the request body came"
        )
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.detail, fields=exc.fields)
    if isinstance(exc, JobNotFound):
        return error_response(404, exc.code, str(exc), job_id=exc.job_id)
    if isinstance(exc, StateConflict):
        return error_response(409, exc.code, str(exc), status=exc.status, job_id=exc.job_id)
    if isinstance(exc, IdempotencyConflict):
        if not exc.existing.int:  # no job holds the key: a batch used it twice, differently
            detail = f"idempotency_key {exc.key!r} appears in the batch twice with different bodies"
            return error_response(409, exc.code, detail, job_id=None)
        return error_response(409, exc.code, str(exc), job_id=exc.existing)
    if isinstance(exc, StatementTimeout):
        return error_response(
            503,
            "statement_timeout",
            "the database cut the statement at DB_STATEMENT_TIMEOUT and nothing was changed; "
            "narrow the request (a retry or cancel by filter: a narrower filter) or raise "
            "DB_STATEMENT_TIMEOUT",
        )
    if isinstance(exc, DatabaseUnavailable):
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable right now; retry later",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, IntegrityViolation):
        return error_response(422, "constraint_violation", f"the database refused the write: {exc}")
    if _is_data_error(exc) and (field := nul_field(request)):
        message = "must not contain the NUL character (\\u0000): PostgreSQL cannot store it"
        fields = [FieldError(field=field, message=message)]
        return error_response(422, "validation_error", _sentence(fields, message), fields=fields)
    if _is_data_error(exc):
        first_line = (str(exc).strip().splitlines() or ["invalid value"])[0]
        return error_response(422, "invalid_value", f"a value cannot be stored: {first_line}")
    if isinstance(exc, msgspec.ValidationError):
        fields = [_msgspec_field(str(exc))]
        return error_response(422, "validation_error", _sentence(fields, str(exc)), fields=fields)
    if isinstance(exc, NotAuthorizedException):
        return error_response(
            401,
            "unauthorized",
            exc.detail or "a valid bearer token is required",
            headers={"WWW-Authenticate": WWW_AUTHENTICATE},
        )
    if isinstance(exc, ValidationException) and _is_missing_body(exc):
        return error_response(
            400, "invalid_json", "the request body is empty; a JSON object is expected"
        )
    if isinstance(exc, ValidationException):
        fields = _validation_fields(exc, request)
        if fields and all(f.message.startswith("json is malformed") for f in fields):
            return error_response(400, "invalid_json", "the request body is not valid JSON")
        return error_response(
            422, "validation_error", _sentence(fields, "the request is invalid"), fields=fields
        )
    if isinstance(exc, SerializationException | UnicodeDecodeError):
        return error_response(400, "invalid_json", "the request body is not valid JSON")
    if isinstance(exc, RecursionError) and "deserializing" in str(exc):
        # msgspec's decoder stops at the interpreter's recursion limit (~950 levels here).
        return error_response(400, "invalid_json", "the request body is nested too deeply")
    if isinstance(exc, RequestEntityTooLarge):
        return error_response(413, "request_too_large", "the request body is too large")
    if isinstance(exc, NotFoundException):
        return error_response(404, "not_found", f"no route or resource at {request.url.path}")
    if isinstance(exc, MethodNotAllowedException):
        return error_response(  # with its Allow header (RFC 9110 asks for it on a 405)
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}",
            headers=exc.headers,
        )
    if isinstance(exc, HTTPException) and exc.status_code == 400 and _is_body_decode(exc):
        detail = exc.detail
        if "truncated" in detail.lower():  # msgspec's words for a lone surrogate escape too
            detail += " (it ends early, or a string holds an unpaired \\ud800-\\udfff escape)"
        return error_response(400, "invalid_json", f"the request body is not valid JSON: {detail}")
    if isinstance(exc, HTTPException):
        code = STATUS_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if exc.status_code < 500 else "internal error"
        return error_response(exc.status_code, code, detail or code.replace("_", " "))
    log.error(
        "unhandled error on %s %s", request.method, request.url.path, exc_info=exc
    )  # never the headers: they may hold a token
    return error_response(500, "internal_error", "an internal error occurred; it was logged")


def _is_missing_body(exc: ValidationException) -> bool:
    """An empty body: Litestar reports the body parameter (``data``) itself as missing, with
    the bare ``KeyError`` text ``'data'`` as the message."""
    items = exc.extra if isinstance(exc.extra, list) else []
    return bool(items) and all(
        isinstance(i, dict) and i.get("key") == "data" and i.get("message") == "'data'"
        for i in items
    )


def _is_body_decode(exc: HTTPException) -> bool:
    """Litestar reports an undecodable body as a plain 400 raised from the decoder's
    ``SerializationException`` (whatever msgspec's words: "truncated", "out of range"), or
    with a detail that names JSON or UTF-8."""
    if isinstance(exc.__cause__, SerializationException):
        return True
    text = (exc.detail or "").lower()
    return "json" in text or "utf-8" in text or "decode" in text


def responses(*codes: int, body: bool = False) -> dict[int, ResponseSpec]:
    """OpenAPI documentation of the error responses a route can give; ``body``: the route
    reads a JSON body (413, 415). Every route can answer 400, 401, 408, 431 and 503."""
    text = {
        400: "Not valid JSON (or not valid HTTP/1.1)",
        401: "Missing or invalid bearer token",
        404: "No such job",
        408: "The request head (30 s) or body (120 s) did not arrive in time",
        409: "State conflict (the body carries the job's status) or idempotency conflict; "
        "both carry job_id",
        413: "Request body larger than MAX_REQUEST_BYTES",
        415: "A body that is not JSON, or a Content-Encoding",
        422: "Validation failed; `fields` names each offending field",
        431: "Request line and headers over 64 KiB",
        503: "PostgreSQL is unavailable, or the statement ran over DB_STATEMENT_TIMEOUT",
    }
    bodies = {413, 415} if body else set()
    return {  # examples of our own: Litestar's generated ones are random strings
        c: ResponseSpec(
            data_container=ErrorBody,
            description=text.get(c, "Error"),
            generate_examples=False,
            examples=[
                Example(
                    value={
                        "error": EXAMPLE_CODES.get(c, "http_error"),
                        "detail": text.get(c, "Error"),
                    }
                )
            ],
        )
        for c in sorted({*codes, *bodies, 400, 401, 408, 431, 503})
    }


EXAMPLE_CODES = {
    400: "invalid_json",
    401: "unauthorized",
    404: "not_found",
    408: "request_timeout",
    409: "state_conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    431: "request_header_fields_too_large",
    503: "database_unavailable",
}
