"""The blocking client: ``service.client.aio.AsyncClient``'s methods, sent with ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar
from uuid import UUID

import httpx

from service.api.schemas import BatchResult, CountIds, Stats
from service.client.calls import Call, Calls, _filter, client_options, request_kwargs, timeouts
from service.client.errors import ApiError, decode
from service.client.policy import Pager, Retries, WaitLoop
from service.jobs.model import Job

T = TypeVar("T")
JobList = list[Job]  # (the clients have a method named ``list``)


class Client:
    """Blocking client; use as ``with Client(url, token=...) as ai:``. The same methods,
    options and retry rules as ``AsyncClient`` (documented there)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 75.0,
        retries: int = 2,
        long_polls: int = 100,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._timeout = timeouts(timeout)
        self._retries = retries
        options, long = client_options(base_url, token, self._timeout, long_polls)
        self._http = httpx.Client(**options, transport=transport)
        self._long = httpx.Client(**long, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._http.close()
        finally:
            self._long.close()

    def _send(self, call: Call[T], *, retry: bool = True) -> T:
        retries = Retries(self._retries if retry else 0, call.repeatable, call.describe())
        while True:
            try:
                http = self._long if call.read_timeout else self._http
                response = http.request(
                    call.method, call.path, **request_kwargs(call, self._timeout)
                )
                return decode(call.type, response)
            except (ApiError, httpx.TransportError) as exc:
                pause = retries.pause(exc)
                if pause is None:
                    raise
                time.sleep(pause)

    def create(
        self,
        owner_service: str,
        task_type: str,
        model_profile: str,
        input: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        return self._send(Calls.create(owner_service, task_type, model_profile, input, **options))

    def create_batch(
        self, jobs: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any] | None = None
    ) -> BatchResult:
        return self._send(Calls.create_batch(jobs, defaults))

    def get(self, job_id: UUID | str) -> Job:
        return self._send(Calls.get(job_id))

    def wait(self, job_id: UUID | str, timeout: float | None = None) -> Job:
        loop = WaitLoop(timeout, time.monotonic())
        while True:
            asked = loop.ask(started := time.monotonic())
            try:
                job = self._send(Calls.get(job_id, asked), retry=False)
            except (ApiError, httpx.TransportError) as exc:
                pause = loop.failed(exc, time.monotonic())
                if pause is None:
                    raise
                time.sleep(pause)
                continue
            now = time.monotonic()
            wait = loop.answered(job, asked, now - started, now)
            if wait is None:
                return job
            time.sleep(wait)

    def list(
        self, *, page_size: int = 100, limit: int | None = None, **filters: Any
    ) -> Iterator[Job]:
        pager = Pager(page_size, limit, _filter(**filters))
        while (call := pager.next_call()) is not None:
            yield from pager.take(self._send(call))

    def retry(self, job_id: UUID | str) -> Job:
        return self._send(Calls.retry(job_id))

    def retry_where(self, *, all: bool = False, **filters: Any) -> CountIds:
        return self._send(Calls.retry_where(_filter(**filters), all))

    def cancel(self, job_id: UUID | str) -> Job:
        return self._send(Calls.cancel(job_id))

    def cancel_where(self, *, all: bool = False, **filters: Any) -> CountIds:
        return self._send(Calls.cancel_where(_filter(**filters), all))

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
        call = Calls.claim(worker_id, model_profile, limit, lease_seconds, wait_seconds, task_type)
        return self._send(call).jobs

    def heartbeat(
        self, job_id: Job | UUID | str, worker_id: str, *, lease_seconds: float | None = None
    ) -> Job:
        return self._send(Calls.heartbeat(job_id, worker_id, lease_seconds))

    def complete(self, job_id: Job | UUID | str, worker_id: str, result: Any = None) -> Job:
        return self._send(Calls.complete(job_id, worker_id, result))

    def fail(
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
        return self._send(call)

    def stats(self) -> Stats:
        return self._send(Calls.stats())
