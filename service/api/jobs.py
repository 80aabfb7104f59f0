"""Caller-facing job routes: submit, read (with long-poll), list, retry and cancel.

Handlers are thin: they translate the wire shapes of ``service.api.schemas`` into calls on
``JobRepository``; every refusal is a domain error mapped to one status by ``errors.py``.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import anyio
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from service import metrics, tracing
from service.api.deps import unless_gone
from service.api.errors import ApiError, invalid, responses
from service.api.hub import FINISHED_CHANNEL, NotifyHub
from service.api.inputs import carries_large_audio, input_problem
from service.api.schemas import (
    BatchItem,
    BatchResult,
    CountIds,
    CreateBatch,
    CreateJob,
    FilterBody,
    JobFields,
    JobPage,
    WaitSeconds,
)
from service.config import Settings
from service.jobs import Job, JobFilter, JobRepository, NewJob, StateConflict, Status
from service.jobs.model import Instant, submission_problem
from service.jobs.states import ACCEPTS, TERMINAL

_REQUIRED = ("owner_service", "task_type", "model_profile")
# GET /jobs's query: a name outside it is refused, not ignored (a typo such as ``stauts``
# listed every job; ``offset``, which it does not page by, returned page one for ever).
_LIST_PARAMS = (
    *("status", "owner_service", "owner_ref", "task_type", "model_profile", "error_category"),
    *("created_after", "created_before", "id", "limit", "cursor"),
)
_LIST_SINGLE = ("created_after", "created_before", "limit", "cursor")
_FIELDS = JobFields.__struct_fields__


def _repeat(model: type, what: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=model, generate_examples=False, description=f"An idempotent repeat: {what}"
    )


@post(
    "/jobs",
    status_code=201,
    summary="Create a job",
    description="201 with the new job; 200 with the existing job when the same "
    "idempotency_key (per owner_service) was already used with the same body. Inputs of the "
    "built-in task types are checked as their handler reads them (422 naming the field).",
    responses={**responses(409, 422, body=True), 200: _repeat(Job, "the existing job")},
    tags=["jobs"],
)
async def create_job(
    data: JSONBody[CreateJob],
    repo: NamedDependency[JobRepository],
    settings: NamedDependency[Settings],
) -> Response[Job]:
    def check() -> tuple[str, str] | None:
        return submission_problem(data) or input_problem(settings, data)

    on_loop = not carries_large_audio(data.input)
    if problem := check() if on_loop else await anyio.to_thread.run_sync(check):
        raise invalid(*problem)
    with tracing.send(data.model_profile) as sent:
        job, created = await repo.create(data, trace_context=sent.trace_context)
        sent.created(job.id, created)
    if created:
        metrics.jobs_created([job])
    return Response(job, status_code=201 if created else 200)


@post(
    "/jobs/batch",
    status_code=201,
    summary="Create many jobs in one transaction",
    description="Each item's fields override `defaults` field by field. Up to MAX_BATCH_SIZE "
    "items; all or nothing. 201 when any job was created, 200 when all were idempotent repeats.",
    responses={**responses(409, 422, body=True), 200: _repeat(BatchResult, "the existing jobs")},
    tags=["jobs"],
)
async def create_batch(
    data: JSONBody[CreateBatch],
    repo: NamedDependency[JobRepository],
    settings: NamedDependency[Settings],
) -> Response[BatchResult]:
    if len(data.jobs) > settings.max_batch_size:
        raise invalid(
            "jobs",
            f"at most {settings.max_batch_size} jobs per batch (got {len(data.jobs)})",
            code="batch_too_large",
        )

    if data.defaults.idempotency_key is not None:
        inherit = sum(1 for item in data.jobs if item.idempotency_key is None)
        if inherit > 1:  # (else: 409, "appears in the batch twice with different bodies")
            raise invalid(
                "defaults.idempotency_key",
                f"a key names one job, and {inherit} jobs of the batch would share it: give "
                "each job its own key in its item",
            )

    def merge_all() -> list[NewJob]:
        return [_merge(i, data.defaults, item, settings) for i, item in enumerate(data.jobs)]

    heavy = carries_large_audio(data.defaults.input, *(item.input for item in data.jobs))
    news = await anyio.to_thread.run_sync(merge_all) if heavy else merge_all()
    with tracing.send_batch(news, settings.otel_create_spans_max_batch) as sent:
        results = await repo.create_batch(news, trace_contexts=sent.trace_contexts)
        sent.created(results)
    metrics.jobs_created(new for new, (_, c) in zip(news, results, strict=True) if c)
    created = sum(1 for _, c in results if c)
    body = BatchResult(
        items=[BatchItem(id=i, created=c) for i, c in results],
        created=created,
        existing=len(results) - created,
    )
    return Response(body, status_code=201 if created else 200)


def _merge(index: int, defaults: JobFields, item: JobFields, settings: Settings) -> NewJob:
    merged: dict[str, Any] = {}
    for f in _FIELDS:
        value = getattr(item, f)
        if value is None:
            value = getattr(defaults, f)
        if value is not None:
            merged[f] = value
    for f in _REQUIRED:
        if f not in merged:
            raise invalid(
                f"jobs[{index}].{f}", "required field is missing (in the item and in defaults)"
            )
    new = NewJob(**merged)
    if problem := submission_problem(new) or input_problem(settings, new):
        raise invalid(f"jobs[{index}].{problem[0]}", problem[1])
    return new


@get(
    "/jobs",
    summary="List jobs (newest first)",
    description="Filters combine with AND; a repeated `status`, `task_type`, `model_profile`, "
    "`error_category` or `id` (`status=pending&status=failed`) matches any of its values; "
    "`owner_service` and `owner_ref` take one value. Keyset pagination: pass `next_cursor` "
    "back as `cursor`.",
    responses=responses(422),
    tags=["jobs"],
)
async def list_jobs(
    request: Request[Any, Any, Any],
    repo: NamedDependency[JobRepository],
    status: FromQuery[list[Status] | None] = None,
    owner_service: FromQuery[list[str] | None] = None,
    owner_ref: FromQuery[list[str] | None] = None,
    task_type: FromQuery[list[str] | None] = None,
    model_profile: FromQuery[list[str] | None] = None,
    error_category: FromQuery[list[str] | None] = None,
    created_after: FromQuery[Instant | None] = None,
    created_before: FromQuery[Instant | None] = None,
    ids: Annotated[list[UUID] | None, QueryParameter(name="id", description="job ids")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    cursor: Annotated[
        UUID | None, QueryParameter(description="next_cursor of the last page")
    ] = None,
) -> JobPage:
    _known_query(request)
    for name, value in (("created_after", created_after), ("created_before", created_before)):
        if value is not None and value.tzinfo is None:  # (query values skip msgspec's tz check)
            raise invalid(name, "expected `datetime` with a timezone component")
    flt = JobFilter(
        ids=ids,
        status=status,
        owner_service=_one("owner_service", owner_service),
        owner_ref=_one("owner_ref", owner_ref),
        task_type=task_type,
        model_profile=model_profile,
        error_category=error_category,
        created_after=created_after,
        created_before=created_before,
    )
    items, next_cursor = await repo.list_jobs(flt, limit=limit, cursor=cursor)
    return JobPage(items=items, next_cursor=str(next_cursor) if next_cursor else None)


def _known_query(
    request: Request[Any, Any, Any],
    params: tuple[str, ...] = _LIST_PARAMS,
    single: tuple[str, ...] = _LIST_SINGLE,
    hint: str = "; pages follow cursor",
) -> None:
    """Refuse query parameters the route does not take (a typo, ``?wait=30`` for
    ``wait_seconds``, would otherwise be ignored: a long-poll answered at once, a client
    looping on it), and a repeat of one that takes one value (the last would be used)."""
    query = request.query_params
    for name in query:
        if name not in params:
            known = ", ".join(params)
            raise invalid(name, f"unknown query parameter (known: {known}{hint})")
    for name in single:
        if len(set(query.getall(name, []))) > 1:
            raise invalid(name, "give one value (it was repeated with different values)")


def _one(name: str, values: list[str] | None) -> str | None:
    """A filter that takes one value: a repeat is refused, not silently narrowed to the last
    value given (which listed nothing, or another owner's jobs)."""
    if not values:
        return None
    if len(set(values)) > 1:
        raise invalid(name, "give one value (it was repeated with different values)")
    return values[0]


# ``{job_id:str}`` and a ``UUID`` argument, not ``{job_id:uuid}``: a malformed id is then a 422
# naming job_id (the argument's conversion fails) instead of a 404 from no route matching.
@get(
    "/jobs/{job_id:str}",
    summary="Get a job (optionally wait until it finishes)",
    description="With `wait_seconds` > 0 the request returns as soon as the job is completed, "
    "failed or cancelled (woken by a NOTIFY), or when the time is up — whatever its state.",
    responses=responses(404, 422),
    tags=["jobs"],
)
async def get_job(
    job_id: FromPath[UUID],
    request: Request[Any, Any, Any],
    repo: NamedDependency[JobRepository],
    hub: NamedDependency[NotifyHub],
    wait_seconds: Annotated[WaitSeconds, QueryParameter(ge=0, le=60)] = 0,
) -> Job:
    _known_query(request, ("wait_seconds",), ("wait_seconds",), "")
    last: Job | None = None

    async def finished() -> Job | None:
        nonlocal last
        last = await repo.get(job_id)
        return last if last.status in TERMINAL else None

    if wait_seconds <= 0:
        return await repo.get(job_id)
    keys = [(FINISHED_CHANNEL, str(job_id))]
    await unless_gone(request, lambda gone: hub.wait_for(keys, finished, wait_seconds, gone=gone))
    assert last is not None
    return last


def _selection(data: FilterBody) -> JobFilter:
    flt = data.to_filter()
    if flt.is_empty() and not data.all:
        raise ApiError(
            422,
            "filter_required",
            'an empty filter would select every job; give a filter or set "all": true',
        )
    return flt


@post(
    "/jobs/retry",
    status_code=200,
    summary="Retry failed/running jobs by filter",
    responses=responses(422, body=True),
    tags=["jobs"],
)
async def retry_jobs(data: JSONBody[FilterBody], repo: NamedDependency[JobRepository]) -> CountIds:
    ids = await repo.retry_where(_selection(data))
    return CountIds(count=len(ids), ids=ids)


@post(
    "/jobs/cancel",
    status_code=200,
    summary="Cancel pending/running jobs by filter",
    responses=responses(422, body=True),
    tags=["jobs"],
)
async def cancel_jobs(data: JSONBody[FilterBody], repo: NamedDependency[JobRepository]) -> CountIds:
    ids = await repo.cancel_where(_selection(data))
    return CountIds(count=len(ids), ids=ids)


@post(
    "/jobs/{job_id:str}/retry",
    status_code=200,
    summary="Retry one failed or running job",
    description="Resets the attempt budget; a running job's worker loses its lease.",
    responses=responses(404, 409, 422),
    tags=["jobs"],
)
async def retry_job(job_id: FromPath[UUID], repo: NamedDependency[JobRepository]) -> Job:
    return await repo.retry(job_id)


@post(
    "/jobs/{job_id:str}/cancel",
    status_code=200,
    summary="Cancel one pending or running job",
    responses=responses(404, 409, 422),
    tags=["jobs"],
)
async def cancel_job(job_id: FromPath[UUID], repo: NamedDependency[JobRepository]) -> Job:
    if not await repo.cancel_where(JobFilter(ids=[job_id])):
        job = await repo.get(job_id)  # 404 when it does not exist
        accepted = "|".join(sorted(ACCEPTS["cancel"]))
        raise StateConflict(job_id, "cancel", job.status, f"cancel needs status {accepted}")
    return await repo.get(job_id)


ROUTES = [
    create_job,
    create_batch,
    list_jobs,
    get_job,
    retry_jobs,
    cancel_jobs,
    retry_job,
    cancel_job,
]
