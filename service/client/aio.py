"""The async client (the blocking one in ``service.client.sync`` mirrors it method for method)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar
from uuid import UUID

import anyio
import httpx

from service.api.schemas import BatchResult, CountIds, Stats
from service.client.calls import Call, Calls, _filter, client_options, request_kwargs, timeouts
from service.client.errors import ApiError, decode
from service.client.policy import Pager, Retries, WaitLoop
from service.jobs.model import Job

T = TypeVar("T")
JobList = list[Job]  # (the clients have a method named ``list``)


class AsyncClient:
    """Async client; use as ``async with AsyncClient(url, token=...) as ai:``.

    ``timeout`` (seconds) is longer than the server's default statement timeout (60 s), so a
    slow request is answered before the client gives up on it. ``retries``: how many times a
    request that is safe to send twice — a read, or a create with an idempotency key — is sent
    again after a 429/502/503/504 or a lost connection, after 0.25 s then 0.5 s (jittered) or
    the server's ``Retry-After`` (one longer than 10 s is raised at once: ``ApiError.retry_after``
    says how long, the caller decides); other requests only when the connection was never
    made. Each retry is logged at INFO on ``ai_service.client``. ``long_polls``: how many long
    polls (``wait``, ``claim`` with ``wait_seconds``) run at once, on connections of their
    own (more wait for one); other calls never queue behind them. A ``transport`` given is
    used for both kinds of call, with its own connection limits: ``long_polls`` does not
    apply then, and long polls share its connections with the other calls."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 75.0,
        retries: int = 2,
        long_polls: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = timeouts(timeout)
        self._retries = retries
        options, long = client_options(base_url, token, self._timeout, long_polls)
        self._http = httpx.AsyncClient(**options, transport=transport)
        self._long = httpx.AsyncClient(**long, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await self._http.aclose()
        finally:
            await self._long.aclose()

    async def _send(self, call: Call[T], *, retry: bool = True) -> T:
        retries = Retries(self._retries if retry else 0, call.repeatable, call.describe())
        while True:
            try:
                http = self._long if call.read_timeout else self._http
                response = await http.request(
                    call.method, call.path, **request_kwargs(call, self._timeout)
                )
                return decode(call.type, response)
            except (ApiError, httpx.TransportError) as exc:
                pause = retries.pause(exc)
                if pause is None:
                    raise
                await anyio.sleep(pause)

    async def create(
        self,
        owner_service: str,
        task_type: str,
        model_profile: str,
        input: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Submit one job (``owner_ref``, ``priority``, ``max_attempts``, ``run_after``,
        ``idempotency_key`` as keywords); a repeated idempotency key returns the same job.
        Without a key, a timeout leaves the outcome unknown: the job may exist."""
        return await self._send(
            Calls.create(owner_service, task_type, model_profile, input, **options)
        )

    async def create_batch(
        self, jobs: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any] | None = None
    ) -> BatchResult:
        return await self._send(Calls.create_batch(jobs, defaults))

    async def get(self, job_id: UUID | str) -> Job:
        return await self._send(Calls.get(job_id))

    async def wait(self, job_id: UUID | str, timeout: float | None = None) -> Job:
        """The job once it is completed, failed or cancelled (long-polls, in chunks of at
        most 50 s). With ``timeout``, returns the job as it is when the time is up. A 429/502/
        503/504 or a lost connection is ridden out (honouring ``Retry-After``) until the
        timeout, or for 5 minutes without one, then raised; other errors raise at once.
        ``timeout`` bounds the waiting for the job, not a server that stops answering: a
        poll's read gives up after its length plus the client's ``timeout``."""
        loop = WaitLoop(timeout, anyio.current_time())
        while True:
            asked = loop.ask(started := anyio.current_time())
            try:
                job = await self._send(Calls.get(job_id, asked), retry=False)
            except (ApiError, httpx.TransportError) as exc:
                pause = loop.failed(exc, anyio.current_time())
                if pause is None:
                    raise
                await anyio.sleep(pause)
                continue
            now = anyio.current_time()
            wait = loop.answered(job, asked, now - started, now)
            if wait is None:
                return job
            await anyio.sleep(wait)

    async def list(
        self, *, page_size: int = 100, limit: int | None = None, **filters: Any
    ) -> AsyncIterator[Job]:
        """Iterate matching jobs newest first, fetching pages as needed (at most ``limit``)."""
        pager = Pager(page_size, limit, _filter(**filters))
        while (call := pager.next_call()) is not None:
            for job in pager.take(await self._send(call)):
                yield job

    async def retry(self, job_id: UUID | str) -> Job:
        return await self._send(Calls.retry(job_id))

    async def retry_where(self, *, all: bool = False, **filters: Any) -> CountIds:
        return await self._send(Calls.retry_where(_filter(**filters), all))

    async def cancel(self, job_id: UUID | str) -> Job:
        return await self._send(Calls.cancel(job_id))

    async def cancel_where(self, *, all: bool = False, **filters: Any) -> CountIds:
        return await self._send(Calls.cancel_where(_filter(**filters), all))

    async def claim(
        self,
        worker_id: str,
        model_profile: str | Sequence[str],
        *,
        limit: int = 1,
        lease_seconds: float | None = None,
        wait_seconds: float = 0,
        task_type: str | Sequence[str] | None = None,
    ) -> JobList:
        """Lease due jobs; ``task_type`` limits them to the ones this worker runs. With
        ``wait_seconds`` (at most 60, the server's bound) and none due, waits for one; each
        request waits at most 50 s (under common proxies' idle timeouts), so a longer wait
        returns an empty list after 50 s: call again."""
        call = Calls.claim(worker_id, model_profile, limit, lease_seconds, wait_seconds, task_type)
        return (await self._send(call)).jobs

    async def heartbeat(
        self, job_id: Job | UUID | str, worker_id: str, *, lease_seconds: float | None = None
    ) -> Job:
        """Extend the lease of a claimed job. Here and in ``complete`` and ``fail``, pass the
        claimed ``Job`` itself rather than its id: its ``started_at`` then names this run,
        and a late call of it cannot act on a later run of the same job (retried, or reaped
        and claimed again under the same ``worker_id``): it raises ``ApiError`` 409
        ``state_conflict``."""
        return await self._send(Calls.heartbeat(job_id, worker_id, lease_seconds))

    async def complete(self, job_id: Job | UUID | str, worker_id: str, result: Any = None) -> Job:
        return await self._send(Calls.complete(job_id, worker_id, result))

    async def fail(
        self,
        job_id: Job | UUID | str,
        worker_id: str,
        error_category: str,
        error_message: str = "",
        *,
        retryable: bool = False,
        retry_after_seconds: float | None = None,
    ) -> Job:
        call = Calls.fail(
            job_id, worker_id, error_category, error_message, retryable, retry_after_seconds
        )
        return await self._send(call)

    async def stats(self) -> Stats:
        return await self._send(Calls.stats())
