"""Typed Python client of the HTTP API (httpx), sync and async, for domain services.

    from service.client import Client

    with Client("http://ai-service:8080", token=os.environ["AI_SERVICE_TOKEN"]) as ai:
        job = ai.create("telephony", "call_analysis", "qwen2.5-14b", {"user": "..."},
                        idempotency_key=f"call/{call_id}")
        done = ai.wait(job.id, timeout=300)      # long-polls; no sleep loop
        print(done.status, done.result)

``AsyncClient`` has the same methods as coroutines. Every non-2xx answer raises ``ApiError``
carrying the service's stable ``code`` (``not_found``, ``state_conflict``, …), its sentence,
the offending ``fields`` and, for conflicts, the job's current ``status``.

Why one request table for both clients: each method is described once (``_Call``: method,
path, query, body, response type); the sync and async classes differ only in how they send.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import anyio
import httpx
import msgspec

from service.api.schemas import BatchResult, ClaimResult, CountIds, ErrorBody, JobPage, Stats
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

T = TypeVar("T")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
LONG_POLL_MAX = 60.0  # the server's limit on wait_seconds
JobList = list[Job]  # (the clients have a method named ``list``)


TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # what an HTTP header value may carry unquoted
RETRY_WITHOUT_DEADLINE = 300.0  # how long ``wait()`` without a timeout rides out errors
RIDDEN_OUT = frozenset({502, 503, 504})  # a GET answered so is worth asking again


class ApiError(Exception):
    """A non-2xx answer, decoded from the service's error body. Picklable, so it can cross
    process boundaries (task queues, multiprocessing)."""

    def __init__(self, status_code: int, body: ErrorBody, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code} {body.error}: {body.detail}")
        self.status_code = status_code
        self.body = body
        self.code = body.error
        self.detail = body.detail
        self.fields = [(f.field, f.message) for f in body.fields or []]
        self.status = body.status
        self.job_id = body.job_id
        self.retry_after = retry_after  # seconds, from a 503's Retry-After

    def __reduce__(self) -> tuple[Any, ...]:
        return (ApiError, (self.status_code, self.body, self.retry_after))


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    type: type[T]
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    read_timeout: float | None = None  # extra time for long-polls


_encode = msgspec.json.Encoder().encode


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _instant(name: str, value: datetime | None) -> str | None:
    """``value`` as RFC 3339; a naive datetime is refused here, before the server's 422
    (which zone it meant is unknowable)."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return value.isoformat()


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: not worth parsing for a hint
        return None


def _decode(call: _Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        try:
            err = msgspec.json.decode(response.content, type=ErrorBody)
        except msgspec.DecodeError:
            err = ErrorBody(
                error="http_error", detail=response.text[:500] or response.reason_phrase
            )
        raise ApiError(response.status_code, err, _seconds(response.headers.get("Retry-After")))
    return msgspec.json.decode(response.content, type=call.type, strict=False)


def _filter(
    *,
    ids: Sequence[UUID | str] | None = None,
    status: Sequence[str] | None = None,
    owner_service: str | None = None,
    owner_ref: str | None = None,
    task_type: Sequence[str] | None = None,
    model_profile: Sequence[str] | None = None,
    error_category: Sequence[str] | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> dict[str, Any]:
    def seq(v: Sequence[Any] | str | None) -> list[Any] | None:
        if v is None:
            return None
        return [v] if isinstance(v, str) else [str(x) for x in v]  # "failed" is one status

    return _clean(
        {
            "ids": seq(ids),
            "status": seq(status),
            "owner_service": owner_service,
            "owner_ref": owner_ref,
            "task_type": seq(task_type),
            "model_profile": seq(model_profile),
            "error_category": seq(error_category),
            "created_after": _instant("created_after", created_after),
            "created_before": _instant("created_before", created_before),
        }
    )


class _Calls:
    """The request of each API method (shared by both clients)."""

    @staticmethod
    def create(
        owner_service: str,
        task_type: str,
        model_profile: str,
        input: Mapping[str, Any] | None = None,
        *,
        owner_ref: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_after: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> _Call[Job]:
        body = _clean(
            {
                "owner_service": owner_service,
                "task_type": task_type,
                "model_profile": model_profile,
                "input": dict(input) if input is not None else None,
                "owner_ref": owner_ref,
                "priority": priority,
                "max_attempts": max_attempts,
                "run_after": _instant("run_after", run_after),
                "idempotency_key": idempotency_key,
            }
        )
        return _Call("POST", "/api/v1/jobs", Job, body=body)

    @staticmethod
    def create_batch(
        jobs: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any] | None = None
    ) -> _Call[BatchResult]:
        body = {"jobs": list(jobs), "defaults": dict(defaults or {})}
        return _Call("POST", "/api/v1/jobs/batch", BatchResult, body=body)

    @staticmethod
    def get(job_id: UUID | str, wait_seconds: float = 0) -> _Call[Job]:
        params = {"wait_seconds": wait_seconds} if wait_seconds > 0 else {}
        return _Call("GET", f"/api/v1/jobs/{job_id}", Job, params, read_timeout=wait_seconds)

    @staticmethod
    def page(limit: int, cursor: str | None, flt: dict[str, Any]) -> _Call[JobPage]:
        params = {**flt, "limit": limit, "cursor": cursor}
        if "ids" in params:
            params["id"] = params.pop("ids")
        return _Call("GET", "/api/v1/jobs", JobPage, _clean(params))

    @staticmethod
    def retry_where(flt: dict[str, Any], all: bool) -> _Call[CountIds]:
        return _Call("POST", "/api/v1/jobs/retry", CountIds, body={**flt, "all": all})

    @staticmethod
    def cancel_where(flt: dict[str, Any], all: bool) -> _Call[CountIds]:
        return _Call("POST", "/api/v1/jobs/cancel", CountIds, body={**flt, "all": all})

    @staticmethod
    def retry(job_id: UUID | str) -> _Call[Job]:
        return _Call("POST", f"/api/v1/jobs/{job_id}/retry", Job)

    @staticmethod
    def cancel(job_id: UUID | str) -> _Call[Job]:
        return _Call("POST", f"/api/v1/jobs/{job_id}/cancel", Job)

    @staticmethod
    def claim(
        worker_id: str,
        model_profile: str | Sequence[str],
        limit: int,
        lease_seconds: float | None,
        wait_seconds: float,
        task_type: str | Sequence[str] | None = None,
    ) -> _Call[ClaimResult]:
        profiles = model_profile if isinstance(model_profile, str) else list(model_profile)
        types = task_type if task_type is None or isinstance(task_type, str) else list(task_type)
        body = _clean(
            {
                "worker_id": worker_id,
                "model_profile": profiles,
                "task_type": types,
                "limit": limit,
                "lease_seconds": lease_seconds,
                "wait_seconds": wait_seconds,
            }
        )
        return _Call(
            "POST", "/api/v1/jobs/claim", ClaimResult, body=body, read_timeout=wait_seconds
        )

    @staticmethod
    def heartbeat(job_id: UUID | str, worker_id: str, lease_seconds: float | None) -> _Call[Job]:
        body = _clean({"worker_id": worker_id, "lease_seconds": lease_seconds})
        return _Call("POST", f"/api/v1/jobs/{job_id}/heartbeat", Job, body=body)

    @staticmethod
    def complete(job_id: UUID | str, worker_id: str, result: Any) -> _Call[Job]:
        body = {"worker_id": worker_id, "result": result}
        return _Call("POST", f"/api/v1/jobs/{job_id}/complete", Job, body=body)

    @staticmethod
    def fail(
        job_id: UUID | str,
        worker_id: str,
        error_category: str,
        error_message: str,
        retryable: bool,
        retry_after_seconds: float | None,
    ) -> _Call[Job]:
        body = _clean(
            {
                "worker_id": worker_id,
                "error_category": error_category,
                "error_message": error_message,
                "retryable": retryable,
                "retry_after_seconds": retry_after_seconds,
            }
        )
        return _Call("POST", f"/api/v1/jobs/{job_id}/fail", Job, body=body)

    @staticmethod
    def stats() -> _Call[Stats]:
        return _Call("GET", "/api/v1/stats", Stats)


def _headers(token: str | None) -> dict[str, str]:
    """Request headers. The token is stripped (a secret file's trailing newline) and must be
    printable ASCII: otherwise httpx would refuse every request with an error quoting it."""
    headers = {"Accept": "application/json"}
    token = (token or "").strip()
    if token:
        if not TOKEN_CHARS.fullmatch(token):
            raise ValueError("token must be printable ASCII without spaces (value not shown)")
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _request_kwargs(call: _Call[Any], timeout: httpx.Timeout) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"params": call.params or None}
    if call.body is not None or call.method == "POST":
        kwargs["content"] = _encode(call.body if call.body is not None else {})
        kwargs["headers"] = {"Content-Type": "application/json"}
    if call.read_timeout:
        # A long-poll holds its connection for up to read_timeout: others waiting for one
        # from the pool may wait as long (many concurrent waits would time out otherwise).
        read = (timeout.read or 30.0) + call.read_timeout
        pool = (timeout.pool or 30.0) + call.read_timeout
        kwargs["timeout"] = httpx.Timeout(timeout.connect, read=read, write=timeout.write,
                                          pool=pool)  # fmt: skip
    return kwargs


class _WaitLoop:
    """``wait``'s long-poll loop, shared by both clients: what to ask for, when to return, and
    how long to pause — after a poll answered early with an unfinished job (a server closing
    its long-polls as it shuts down: without a pause the loop would spin), or after an error
    worth riding out (502/503/504, a connection lost during a rollout) while time is left."""

    def __init__(self, timeout: float | None, now: float) -> None:
        self.deadline = None if timeout is None else now + timeout
        self.failing_since: float | None = None
        self.failures = 0
        self.last = False  # the poll under way covers the rest of the time

    def ask(self, now: float) -> float:
        left = LONG_POLL_MAX if self.deadline is None else self.deadline - now
        self.last = self.deadline is not None and left <= LONG_POLL_MAX
        return max(0.0, min(LONG_POLL_MAX, left))

    def answered(self, job: Job, asked: float, took: float, now: float) -> float | None:
        """None: return ``job``; else how long to pause before the next poll."""
        self.failing_since, self.failures = None, 0
        early = asked - took > 1.0
        if job.status in TERMINAL or (self.last and not early):
            return None  # finished, or the poll that covered the rest of the time ran out
        left = LONG_POLL_MAX if self.deadline is None else self.deadline - now
        if left <= 0:
            return None
        return min(1.0, left) if early else 0.0

    def failed(self, exc: Exception, now: float) -> float:
        """How long to pause before asking again; raises ``exc`` when it is not worth it."""
        if self.failing_since is None:
            self.failing_since = now
        limit = self.deadline
        if limit is None:
            limit = self.failing_since + RETRY_WITHOUT_DEADLINE
        passing = isinstance(exc, httpx.TransportError) or (
            isinstance(exc, ApiError) and exc.status_code in RIDDEN_OUT
        )
        if not passing or now >= limit:
            raise exc
        self.failures += 1
        hint = exc.retry_after if isinstance(exc, ApiError) else None
        return min(hint or min(5.0, 0.25 * 2**self.failures), limit - now)


class AsyncClient:
    """Async client; use as ``async with AsyncClient(url, token=...) as ai:``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = httpx.Timeout(timeout)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=_headers(token),
            timeout=self._timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        response = await self._http.request(
            call.method, call.path, **_request_kwargs(call, self._timeout)
        )
        return _decode(call, response)

    async def create(
        self,
        owner_service: str,
        task_type: str,
        model_profile: str,
        input: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Submit one job (``owner_ref``, ``priority``, ``max_attempts``, ``run_after``,
        ``idempotency_key`` as keywords); a repeated idempotency key returns the same job."""
        return await self._send(
            _Calls.create(owner_service, task_type, model_profile, input, **options)
        )

    async def create_batch(
        self, jobs: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any] | None = None
    ) -> BatchResult:
        return await self._send(_Calls.create_batch(jobs, defaults))

    async def get(self, job_id: UUID | str) -> Job:
        return await self._send(_Calls.get(job_id))

    async def wait(self, job_id: UUID | str, timeout: float | None = None) -> Job:
        """The job once it is completed, failed or cancelled (long-polls, in chunks of at
        most 60 s). With ``timeout``, returns the job as it is when the time is up. A 502/503/
        504 or a lost connection is ridden out (honouring ``Retry-After``) until the timeout,
        or for 5 minutes without one; other errors raise ``ApiError`` at once."""
        loop = _WaitLoop(timeout, anyio.current_time())
        while True:
            asked = loop.ask(started := anyio.current_time())
            try:
                job = await self._send(_Calls.get(job_id, asked))
            except (ApiError, httpx.TransportError) as exc:
                await anyio.sleep(loop.failed(exc, anyio.current_time()))
                continue
            now = anyio.current_time()
            pause = loop.answered(job, asked, now - started, now)
            if pause is None:
                return job
            await anyio.sleep(pause)

    async def list(
        self, *, page_size: int = 100, limit: int | None = None, **filters: Any
    ) -> AsyncIterator[Job]:
        """Iterate matching jobs newest first, fetching pages as needed."""
        flt = _filter(**filters)
        cursor: str | None = None
        seen = 0
        while True:
            page = await self._send(_Calls.page(page_size, cursor, flt))
            for job in page.items:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            cursor = page.next_cursor
            if cursor is None:
                return

    async def retry(self, job_id: UUID | str) -> Job:
        return await self._send(_Calls.retry(job_id))

    async def retry_where(self, *, all: bool = False, **filters: Any) -> CountIds:
        return await self._send(_Calls.retry_where(_filter(**filters), all))

    async def cancel(self, job_id: UUID | str) -> Job:
        return await self._send(_Calls.cancel(job_id))

    async def cancel_where(self, *, all: bool = False, **filters: Any) -> CountIds:
        return await self._send(_Calls.cancel_where(_filter(**filters), all))

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
        """Lease due jobs; ``task_type`` limits them to the ones this worker runs."""
        call = _Calls.claim(worker_id, model_profile, limit, lease_seconds, wait_seconds, task_type)
        return (await self._send(call)).jobs

    async def heartbeat(
        self, job_id: UUID | str, worker_id: str, *, lease_seconds: float | None = None
    ) -> Job:
        return await self._send(_Calls.heartbeat(job_id, worker_id, lease_seconds))

    async def complete(self, job_id: UUID | str, worker_id: str, result: Any = None) -> Job:
        return await self._send(_Calls.complete(job_id, worker_id, result))

    async def fail(
        self,
        job_id: UUID | str,
        worker_id: str,
        error_category: str,
        error_message: str = "",
        *,
        retryable: bool = False,
        retry_after_seconds: float | None = None,
    ) -> Job:
        call = _Calls.fail(
            job_id, worker_id, error_category, error_message, retryable, retry_after_seconds
        )
        return await self._send(call)

    async def stats(self) -> Stats:
        return await self._send(_Calls.stats())


class Client:
    """Blocking client with the same methods as ``AsyncClient``; use as a context manager."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._timeout = httpx.Timeout(timeout)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=_headers(token),
            timeout=self._timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        response = self._http.request(
            call.method, call.path, **_request_kwargs(call, self._timeout)
        )
        return _decode(call, response)

    def create(
        self,
        owner_service: str,
        task_type: str,
        model_profile: str,
        input: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        return self._send(_Calls.create(owner_service, task_type, model_profile, input, **options))

    def create_batch(
        self, jobs: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any] | None = None
    ) -> BatchResult:
        return self._send(_Calls.create_batch(jobs, defaults))

    def get(self, job_id: UUID | str) -> Job:
        return self._send(_Calls.get(job_id))

    def wait(self, job_id: UUID | str, timeout: float | None = None) -> Job:
        import time

        loop = _WaitLoop(timeout, time.monotonic())
        while True:
            asked = loop.ask(started := time.monotonic())
            try:
                job = self._send(_Calls.get(job_id, asked))
            except (ApiError, httpx.TransportError) as exc:
                time.sleep(loop.failed(exc, time.monotonic()))
                continue
            now = time.monotonic()
            pause = loop.answered(job, asked, now - started, now)
            if pause is None:
                return job
            time.sleep(pause)

    def list(
        self, *, page_size: int = 100, limit: int | None = None, **filters: Any
    ) -> Iterator[Job]:
        flt = _filter(**filters)
        cursor: str | None = None
        seen = 0
        while True:
            page = self._send(_Calls.page(page_size, cursor, flt))
            for job in page.items:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            cursor = page.next_cursor
            if cursor is None:
                return

    def retry(self, job_id: UUID | str) -> Job:
        return self._send(_Calls.retry(job_id))

    def retry_where(self, *, all: bool = False, **filters: Any) -> CountIds:
        return self._send(_Calls.retry_where(_filter(**filters), all))

    def cancel(self, job_id: UUID | str) -> Job:
        return self._send(_Calls.cancel(job_id))

    def cancel_where(self, *, all: bool = False, **filters: Any) -> CountIds:
        return self._send(_Calls.cancel_where(_filter(**filters), all))

    def claim(
        self,
        worker_id: str,
        model_profile: str | Sequence[str],
        *,
        limit: int = 1,
        lease_seconds: float | None = None,
        wait_seconds: float = 0,
        task_type: str | Sequence[str] | None = None,
    ) -> JobList:
        """Lease due jobs; ``task_type`` limits them to the ones this worker runs."""
        call = _Calls.claim(worker_id, model_profile, limit, lease_seconds, wait_seconds, task_type)
        return self._send(call).jobs

    def heartbeat(
        self, job_id: UUID | str, worker_id: str, *, lease_seconds: float | None = None
    ) -> Job:
        return self._send(_Calls.heartbeat(job_id, worker_id, lease_seconds))

    def complete(self, job_id: UUID | str, worker_id: str, result: Any = None) -> Job:
        return self._send(_Calls.complete(job_id, worker_id, result))

    def fail(
        self,
        job_id: UUID | str,
        worker_id: str,
        error_category: str,
        error_message: str = "",
        *,
        retryable: bool = False,
        retry_after_seconds: float | None = None,
    ) -> Job:
        call = _Calls.fail(
            job_id, worker_id, error_category, error_message, retryable, retry_after_seconds
        )
        return self._send(call)

    def stats(self) -> Stats:
        return self._send(_Calls.stats())
