"""A streaming ``multipart/form-data`` body for audio uploads.

Why not httpx's ``files=``: it reads file objects synchronously and cannot take an async
source, so a downloaded recording would have to be fully in memory (or read with blocking
calls on the event loop) before the upload starts. Here the audio part is an async chunk
source, the total length is known up front (so the request carries ``Content-Length``, which
every server accepts), and the body can be replayed because the source is a factory.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

ChunkSource = Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True)
class AudioUpload:
    """The audio of one transcription request: where its bytes come from and how many."""

    filename: str
    content_type: str
    size: int
    chunks: ChunkSource

    @classmethod
    def from_bytes(
        cls, data: bytes, filename: str = "audio", content_type: str = ""
    ) -> AudioUpload:
        async def once() -> AsyncIterator[bytes]:
            yield data

        return cls(filename, content_type or "application/octet-stream", len(data), once)


def _quote(value: str) -> str:
    # RFC 7578 §4.2: percent-encode the characters that would break the quoted string.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


def _media_type(value: str) -> str:
    """``value`` if it is a bare ``type/subtype``, else ``application/octet-stream``: it comes
    from the caller (a ``data:`` URL) and is written into a part header as is."""
    return value if _MEDIA_TYPE.fullmatch(value) else "application/octet-stream"


class MultipartBody:
    """Text fields followed by one file part, streamed; ``headers`` go with the request."""

    def __init__(
        self, fields: Sequence[tuple[str, str]], file_field: str, upload: AudioUpload
    ) -> None:
        self._boundary = secrets.token_hex(16)
        b = self._boundary
        head = b"".join(
            f'--{b}\r\nContent-Disposition: form-data; name="{_quote(k)}"\r\n\r\n'.encode()
            + v.encode()
            + b"\r\n"
            for k, v in fields
        )
        head += (
            f'--{b}\r\nContent-Disposition: form-data; name="{_quote(file_field)}"; '
            f'filename="{_quote(upload.filename)}"\r\n'
            f"Content-Type: {_media_type(upload.content_type)}\r\n\r\n"
        ).encode()
        self._head = head
        self._tail = f"\r\n--{b}--\r\n".encode()
        self._upload = upload

    @property
    def headers(self) -> dict[str, str]:
        length = len(self._head) + self._upload.size + len(self._tail)
        return {
            "Content-Type": f"multipart/form-data; boundary={self._boundary}",
            "Content-Length": str(length),
        }

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._head
        sent = 0
        async for chunk in self._upload.chunks():
            sent += len(chunk)
            yield chunk
        if sent != self._upload.size:
            # A short or long source would corrupt the framing; fail loudly instead.
            raise ValueError(f"audio source produced {sent} bytes, expected {self._upload.size}")
        yield self._tail
