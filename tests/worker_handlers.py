"""A recording test handler for real ``ai-service worker`` processes.

Loaded with ``AI_SERVICE_EXTRA_HANDLERS=tests.worker_handlers:register``; serves task_type
``test`` on the profiles in ``AI_SERVICE_TEST_PROFILES`` (comma-separated). Every invocation
appends ``<job id> <attempt> <pid>`` to the file named by ``AI_SERVICE_TEST_INVOCATIONS``
(one ``write`` on an ``O_APPEND`` descriptor, so lines from several processes never mix), which
is how the process tests detect a job that ran twice.

Behaviour from the job's input: ``block_on_attempts: [n, ...]`` blocks those attempts until
cancelled; ``wait_for_file: path`` finishes once that file exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from service.handlers.base import HandlerRegistry
from service.jobs import Job

INVOCATIONS_ENV = "AI_SERVICE_TEST_INVOCATIONS"
PROFILES_ENV = "AI_SERVICE_TEST_PROFILES"
TASK_TYPE = "test"

_fd: int | None = None


def _record(job: Job) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ[INVOCATIONS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{job.id} {job.attempts} {os.getpid()}\n".encode())


async def handle(job: Job) -> Any:
    _record(job)
    if job.attempts in job.input.get("block_on_attempts", ()):
        await anyio.sleep_forever()
    if "wait_for_file" in job.input:
        # the file is made by the test process: no event can cross that boundary
        path = anyio.Path(job.input["wait_for_file"])
        while not await path.exists():  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return {"pid": os.getpid(), "attempt": job.attempts}


def register(registry: HandlerRegistry) -> None:
    for profile in os.environ.get(PROFILES_ENV, "test-a,test-b").split(","):
        registry.register([TASK_TYPE], profile.strip(), handle)


def read_invocations(path: Path) -> list[tuple[str, int, int]]:
    """``(job id, attempt, pid)`` per recorded invocation."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        job_id, attempt, pid = line.split()
        out.append((job_id, int(attempt), int(pid)))
    return out
