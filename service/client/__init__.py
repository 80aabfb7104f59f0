"""Typed Python client of the HTTP API (httpx), sync and async, for domain services.

    from service.client import Client

    with Client("http://ai-service:8080", token=os.environ["AI_SERVICE_TOKEN"]) as ai:
        job = ai.create("telephony", "call_analysis", "qwen2.5-14b", {"user": "..."},
                        idempotency_key=f"call/{call_id}")
        done = ai.wait(job.id, timeout=300)      # long-polls; no sleep loop
        print(done.status, done.result)

``AsyncClient`` has the same methods as coroutines. Every answer that is not the service's
2xx JSON raises ``ApiError`` carrying the service's stable ``code`` (``not_found``,
``state_conflict``, …), its sentence, the offending ``fields`` and, for conflicts, the job's
current ``status``; no answer at all (connection refused, timed out) raises httpx's
``TransportError``. Reads and creates with an idempotency key are retried after a
429/502/503/504 or a lost connection (``retries=2``); any other request only when its
connection was never made.

Modules: ``calls`` (the request of each method), ``errors`` (``ApiError``, reading answers),
``policy`` (retries and ``wait``'s loop), ``aio`` and ``sync`` (the two clients).
"""

from __future__ import annotations

from service.api.schemas import BatchResult, CountIds, Stats
from service.client.aio import AsyncClient
from service.client.errors import ApiError
from service.client.sync import Client
from service.jobs.model import Job

__all__ = [
    "ApiError",
    "AsyncClient",
    "BatchResult",
    "Client",
    "CountIds",
    "Job",
    "Stats",
]
