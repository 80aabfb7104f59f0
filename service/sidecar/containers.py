"""Inference containers from the Docker Engine API over its Unix socket (read-only: list).
No socket (or no permission) means "unavailable", which is normal off the AI server."""

from __future__ import annotations

from typing import Any

import httpx


async def read_containers(socket_path: str = "/var/run/docker.sock") -> dict[str, Any]:
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    try:
        async with httpx.AsyncClient(transport=transport, timeout=3.0) as client:
            resp = await client.get("http://docker/containers/json", params={"all": "true"})
            resp.raise_for_status()
            rows = resp.json()
    except httpx.ConnectError:
        return {"available": False, "reason": f"no Docker socket at {socket_path}", "items": []}
    except (httpx.HTTPError, ValueError) as exc:
        return {"available": False, "reason": f"Docker API error: {exc}", "items": []}
    items = [
        {
            "name": (c.get("Names") or ["?"])[0].lstrip("/"),
            "image": c.get("Image"),
            "state": c.get("State"),
            "status": c.get("Status"),
        }
        for c in rows
    ]
    return {"available": True, "items": items}
