"""Reading an HTTP response from a server we do not control, with a bound on what it costs.

Why: httpx inflates a ``Content-Encoding: gzip`` body whatever the request asked for, and
stacked encodings (``gzip, gzip``) multiply: a 3,477-byte chat response took a worker to
4 GB of memory and 14 s of blocked event loop before any size check could run. Every request
here asks for ``identity``; a compressed answer, or one larger than ``MAX_RESPONSE_BYTES``, is
refused before it is inflated or buffered. (Inference servers answer uncompressed: vLLM sends
JSON as is, and chat, transcription and model-list bodies are kilobytes.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

IDENTITY = {"accept-encoding": "identity"}
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class ResponseRefused(httpx.DecodingError):
    """A response not read: compressed although ``identity`` was asked, or too large."""


async def read_bounded(response: httpx.Response, limit: int | None = None) -> httpx.Response:
    """``response`` read in full (as ``aread`` would), or ``ResponseRefused``; closed either
    way. ``limit`` defaults to ``MAX_RESPONSE_BYTES``."""
    limit = MAX_RESPONSE_BYTES if limit is None else limit
    try:
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise ResponseRefused(f"the response is compressed ({encoding}); identity was asked")
        declared = response.headers.get("content-length", "")
        if declared.isdigit():  # what inference servers send: HTTP framing bounds the read
            if int(declared) > limit:
                raise ResponseRefused(f"the response is larger than {limit} bytes")
            await response.aread()  # the counted path below costs ~15 µs more per chat call
            return response
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise ResponseRefused(f"the response is larger than {limit} bytes")
            chunks.append(chunk)
    finally:
        await response.aclose()
    read = httpx.Response(
        response.status_code,
        headers=response.headers,
        content=b"".join(chunks),
        request=response.request,
        extensions=response.extensions,
    )
    return read


async def send_bounded(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL | str,
    *,
    headers: Mapping[str, str] | None = None,
    content: Any = None,
    limit: int | None = None,
) -> httpx.Response:
    """``client.request`` asking for ``identity``, its answer read by ``read_bounded``."""
    asked = IDENTITY | dict(headers or {})
    request = client.build_request(method, url, headers=asked, content=content)
    return await read_bounded(await client.send(request, stream=True), limit)
