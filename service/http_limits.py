"""Bounds on what a client may make an HTTP server hold before a request even starts.

uvicorn's httptools protocol sets no limit on the size of a request's head (request line and
headers) and no deadline for receiving it: one 300 MB header kept the API busy for 110 s and
grew it by ~370 MB, and connections that send half a head stay open for ever (the keep-alive
timeout only runs between requests, and any byte, even a bare CRLF, stops it). Both are open
to anyone who reaches the port, token or not, since headers are read before any route or guard
runs. nginx and Envoy bound the same (``large_client_header_buffers``, ``client_header_timeout``).

``BoundedHttpToolsProtocol`` adds both:

- size: a head over ``MAX_HEAD_BYTES`` gets 431 and the connection is closed. The request line
  and each complete header are counted exactly as the parser hands them over; since httptools
  gathers one header's bytes itself before handing it over, the bytes received while a head is
  incomplete are counted too, with one socket read of slack (a read may also hold the end of the
  previous request's body), so no single header can grow past ``MAX_HEAD_BYTES + READ_SLACK``.
  After the head, bytes that are not body (a chunked body's trailers, which httptools gathers
  the same way) are bounded alike: that many in a row, after the read that brought the last
  body bytes, close the connection (no answer fits: the request is still unread).
- time: a head not complete within ``HEAD_TIMEOUT_S`` of the connection opening, or of the
  first byte after a response (any byte), gets 408 (or, if nothing of a request came, a close).
  No head is timed while a response is being produced: a client pipelining its next request
  behind a long-poll is not cut off (uvicorn's keep-alive timeout takes over after it).
  A body not complete within ``BODY_TIMEOUT_S`` of its head gets 408 too (or a close, when
  the app has answered already): a request that declared 1,000 bytes and sent 7 held its
  connection and its handler, waiting in ``receive()``, for ever. One timer per request with
  a body, as nginx's ``client_body_timeout``; the app, if it was reading, hears a disconnect.

Everything else is uvicorn's httptools protocol unchanged; the tests exercise it through a real
server, so an incompatible uvicorn fails them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("ai_service.http")

# The `error` code of an answer known only by its status (the API's and the workers' ports).
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    500: "internal_error",
    503: "service_unavailable",
}

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; ours are < 1 KiB (token, traceparent)
READ_SLACK = 256 * 1024  # asyncio's socket read size
HEAD_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 120.0  # 10 MiB (MAX_REQUEST_BYTES' default) at ~85 KiB/s


def has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request declares a body (raw ASGI headers, names lower-case): chunked, or a
    Content-Length other than zero (``00`` too; one that is not a number counts as a body,
    which the parser then refuses). One reading for the body deadline here and the media
    type guard (service/api/media.py)."""
    length: bytes | None = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            length = value.strip()
    if length is None:
        return False
    return not (length.isdigit() and int(length) == 0)


class _HeadTooLarge(Exception):
    """Raised inside a parser callback: httptools stops parsing, uvicorn answers 400, which
    ``send_400_response`` turns into 431."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES
    read_slack = READ_SLACK
    head_timeout_s = HEAD_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # exact: the request line and complete headers of this head
        self._fed_in_head = 0  # coarse: bytes received while a head was incomplete
        self._not_body = 0  # coarse: bytes since the head that brought no body (trailers)
        self._body_came = False
        self._in_head = True  # a head has not completed since the last one (or ever)
        self._began = False  # a request's first byte came (so a timeout gets a 408)
        self._head_too_large = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # --- reading ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is closed too

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._idle():
            self._arm()  # bytes after a response (even a bare CRLF) start the head's clock
        self._body_came = False
        super().data_received(data)
        if self.transport.is_closing():
            return
        bound = self.max_head_bytes + self.read_slack
        if self._in_head:
            self._fed_in_head += len(data)
            if self._fed_in_head > bound:
                self._head_too_large = True
                self.send_400_response("")
        elif self._body_came:
            self._not_body = 0
        else:
            self._not_body += len(data)
            if self._not_body > bound:
                log.warning("over %d bytes after a request's head that are not its body "
                            "(trailers): closed", bound)  # fmt: skip
                self.transport.close()

    def on_body(self, body: bytes) -> None:
        self._body_came = True
        super().on_body(body)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = self._began = True
        if self._head_timer is None and self._idle():
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_head, self._began = False, False
        self._head_bytes = self._fed_in_head = self._not_body = 0
        if has_body(self.headers):
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # what comes next belongs to the next head
        self._disarm_body()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """No response is being produced on this connection."""
        cycle = getattr(self, "cycle", None)
        return cycle is None or bool(cycle.response_complete)

    # --- the deadline -----------------------------------------------------------------------
    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = getattr(self, "cycle", None)
        if cycle is not None and cycle.response_started:  # answered without the body
            self.transport.close()
            return
        log.warning("request body not received within %gs: closed", self.body_timeout_s)
        detail = f"the request body did not arrive within {self.body_timeout_s:g} s"
        self._answer(408, detail)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._idle():
            return
        if self._began:  # a request had begun: say why it is cut off
            log.warning("request head not received within %gs: closed", self.head_timeout_s)
            self._answer(408, "the request head did not arrive in time")
        else:
            self.transport.close()

    # --- the size -------------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # not a trailer: those are bounded as bytes that are not body
            self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused (plain text), in the service's
        error shape: 431 for a head over the bound, else 400 ``bad_request``."""
        self._disarm()
        cycle = getattr(self, "cycle", None)
        if (
            cycle is not None
            and not self._idle()
            and (cycle.response_started or not cycle.more_body)
        ):
            # a pipelined head behind a request still being answered: no answer fits. (A
            # request whose own body is malformed, a bad chunk, is answered: its app is still
            # waiting for the body, so nothing was done and nothing was sent.)
            self.transport.close()
            return
        if not self._head_too_large:
            self._answer(400, "the request is not valid HTTP/1.1")
            return
        log.warning("request head over %d bytes: answered 431", self.max_head_bytes)
        detail = f"the request line and headers exceed {self.max_head_bytes} bytes"
        self._answer(431, detail)

    def _answer(self, status: int, detail: str) -> None:
        """The service's error shape, then close (the rest of the request is not read)."""
        if self.transport.is_closing():
            return
        body = json.dumps({"error": STATUS_CODES[status], "detail": detail}).encode()
        reason = HTTPStatus(status).phrase.encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()
