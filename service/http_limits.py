"""Bounds on what a client may make an HTTP server hold before a request even starts.

uvicorn's httptools protocol sets no limit on the size of a request's head (request line and
headers) and no deadline for receiving it: one 300 MB header kept the API busy for 110 s and
grew it by ~370 MB, and connections that send half a head stay open for ever (the keep-alive
timeout only runs between requests). Both are open to anyone who reaches the port, token or
not, since headers are read before any route or guard runs. nginx and Envoy bound the same
(``large_client_header_buffers``, ``client_header_timeout``).

``BoundedHttpToolsProtocol`` adds both: a head over ``MAX_HEAD_BYTES`` gets 431 and the
connection is closed; a head not complete within ``HEAD_TIMEOUT_S`` of the connection opening
(or of the request's first byte, for later requests on a kept-alive connection) gets 408 and
is closed. Everything else is uvicorn's httptools protocol unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("ai_service.http")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; ours are < 1 KiB (token, traceparent)
HEAD_TIMEOUT_S = 30.0


class _HeadTooLarge(Exception):
    """Raised inside a parser callback: httptools stops parsing, uvicorn answers 400, which
    ``send_400_response`` turns into 431."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._head_too_large = False
        self._head_timer: asyncio.TimerHandle | None = None

    # --- the deadline -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is closed too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes or getattr(self, "url", None):  # a request began: say why
            log.warning("request head not received within %gs: closed", self.head_timeout_s)
            self._answer(408, "request_timeout", "the request head did not arrive in time")
        else:
            self.transport.close()

    # --- the size -------------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        self._disarm()
        log.warning("request head over %d bytes: answered 431", self.max_head_bytes)
        detail = f"the request line and headers exceed {self.max_head_bytes} bytes"
        self._answer(431, "request_header_fields_too_large", detail)

    def _answer(self, status: int, code: str, detail: str) -> None:
        """The service's error shape, then close (the rest of the request is not read)."""
        body = json.dumps({"error": code, "detail": detail}).encode()
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()
