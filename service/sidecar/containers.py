"""Inference containers from the Docker Engine API over its Unix socket (read-only: list).
No socket (or no permission) means "unavailable", which is normal off the AI server.

Only name, image, state and status are reported: container environments and labels often
hold secrets. The read is bounded in time and size like every other source of the status."""

from __future__ import annotations

from typing import Any

import anyio
import httpx

from service.providers.bounded import send_bounded
from service.sidecar import SOURCE_DEADLINE_S

MAX_LISTING_BYTES = 4 * 1024 * 1024


def _item(row: Any) -> dict[str, Any] | None:
    if not isinstance(row, dict):
        return None
    names = row.get("Names")
    first = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else "?"
    return {
        "name": first.lstrip("/"),
        "image": row.get("Image"),
        "state": row.get("State"),
        "status": row.get("Status"),
    }


async def read_containers(socket_path: str = "/var/run/docker.sock") -> dict[str, Any]:
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    try:
        with anyio.fail_after(SOURCE_DEADLINE_S):
            async with httpx.AsyncClient(transport=transport, timeout=SOURCE_DEADLINE_S) as client:
                url = "http://docker/containers/json?all=true"
                resp = await send_bounded(client, "GET", url, limit=MAX_LISTING_BYTES)
                resp.raise_for_status()
                rows = resp.json()
    except httpx.ConnectError:
        return {"available": False, "reason": f"no Docker socket at {socket_path}", "items": []}
    except (httpx.HTTPError, ValueError, TimeoutError) as exc:
        reason = str(exc) or f"{type(exc).__name__} within {SOURCE_DEADLINE_S:g}s"
        return {"available": False, "reason": f"Docker API error: {reason}", "items": []}
    if not isinstance(rows, list):
        return {"available": False, "reason": "Docker API error: not a list", "items": []}
    return {"available": True, "items": [i for i in map(_item, rows) if i is not None]}
