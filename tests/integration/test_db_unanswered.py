"""A PostgreSQL that stops answering without closing anything (the server stopped with
SIGSTOP, a network that drops packets without a reset): readiness must say so within its
bound, and a statement (a COMMIT too) give up past the statement timeout, not hang until TCP
gives up. Between the service and the real server sits a TCP relay that can hold every byte
(``freeze``), as such a network does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream, SocketStream
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from service.db import Database, DatabaseUnavailable, open_database
from service.jobs import JobRepository
from tests.integration.test_worker_runtime import until


class Relay:
    """Forwards TCP connections to PostgreSQL; ``freeze`` holds every byte until ``thaw``."""

    def __init__(self, target: str) -> None:
        info = conninfo_to_dict(target)
        self.host = str(info.get("host") or "127.0.0.1")
        self.port = int(info.get("port") or 5432)
        self._flowing = anyio.Event()
        self._flowing.set()

    async def _connect(self) -> SocketStream:
        # over TCP even when the URL names a socket directory (the embedded server listens on
        # both): anyio's UNIX streams, cancelled mid-receive, could leave a callback on a
        # cancelled future that the test runner reports as an error
        host = "127.0.0.1" if self.host.startswith("/") else self.host
        return await anyio.connect_tcp(host, self.port)

    def freeze(self) -> None:
        self._flowing = anyio.Event()

    def thaw(self) -> None:
        self._flowing.set()

    async def _pump(self, src: ByteStream, dst: ByteStream) -> None:
        try:
            async for chunk in src:
                await self._flowing.wait()
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            await dst.aclose()

    async def handle(self, client: SocketStream) -> None:
        async with client, await self._connect() as server, anyio.create_task_group() as tg:
            tg.start_soon(self._pump, client, server)
            tg.start_soon(self._pump, server, client)


@asynccontextmanager
async def relay_to(url: str) -> AsyncIterator[tuple[Relay, str]]:
    relay = Relay(url)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, relay.handle)
        try:
            yield relay, make_conninfo(url, host="127.0.0.1", port=port)
        finally:
            relay.thaw()
            tg.cancel_scope.cancel()


@asynccontextmanager
async def database_behind_a_relay(
    db_url: str, **options: Any
) -> AsyncIterator[tuple[Relay, Database]]:
    async with relay_to(db_url) as (relay, url):
        db = await open_database(url, **options)
        try:
            yield relay, db
        finally:
            relay.thaw()
            with anyio.fail_after(30):
                await db.close()


async def answered(call: Callable[[], Awaitable[object]]) -> bool:
    """Whether ``call`` got an answer (for ``until``: the server is back)."""
    try:
        await call()
    except DatabaseUnavailable:
        return False
    return True


async def test_a_ping_to_a_server_that_stopped_answering_gives_up_within_its_bound(
    db_url: str,
) -> None:
    async with database_behind_a_relay(db_url, max_size=2, min_size=1) as (relay, db):
        await db.ping()
        relay.freeze()
        # the bound is the ping's own (2 s); this deadline only keeps a hang from holding
        # the suite (before the fix: until TCP gave up, many minutes)
        with anyio.fail_after(30), pytest.raises(DatabaseUnavailable, match="did not answer"):
            await db.ping()
        relay.thaw()
        await until(lambda: answered(db.ping), what="the ping to answer again")


async def test_a_statement_the_server_never_answers_is_abandoned_past_its_timeout(
    db_url: str,
) -> None:
    """Its own statement_timeout cannot fire on a server that stopped: the client's bound
    (statement timeout + margin) ends it, the connection is dropped, and the pool serves
    the next statement once the server answers again."""
    fast = {"max_size": 1, "statement_timeout": 0.5, "answer_margin": 0.5}
    async with database_behind_a_relay(db_url, **fast) as (relay, db):
        assert db.answer_within == 1.0
        assert await db.fetch("stats_by_kind") == []
        relay.freeze()
        with anyio.fail_after(30), pytest.raises(DatabaseUnavailable, match="did not answer"):
            await db.fetch("stats_by_kind")
        relay.thaw()
        await until(lambda: answered(lambda: db.fetch("stats_by_kind")), what="an answer")


async def test_a_commit_the_server_never_answers_is_abandoned_as_of_unknown_outcome(
    db_url: str,
) -> None:
    """No statement timeout applies to a COMMIT: the transaction's own bound ends it."""
    fast = {"max_size": 1, "statement_timeout": 0.5, "answer_margin": 0.5}
    async with database_behind_a_relay(db_url, **fast) as (relay, db):

        async def commit_unanswered() -> None:
            async with db.transaction() as tx:
                assert await tx.fetch("stats_by_kind") == []
                relay.freeze()

        with anyio.fail_after(30), pytest.raises(DatabaseUnavailable, match="COMMIT"):
            await commit_unanswered()


async def test_the_bound_follows_the_timeout_sessions_really_have(db_url: str) -> None:
    """A statement timeout set in the URL's options wins over DB_STATEMENT_TIMEOUT on the
    server, so the client's bound follows it: statements allowed 5 minutes there must not be
    abandoned at 70 s, and with none there, none here."""
    for options, within in (
        ("-c statement_timeout=300000", 310.0),
        ("-c statement_timeout=0", None),
    ):
        db = await open_database(make_conninfo(db_url, options=options), max_size=1)
        try:
            assert db.answer_within == within, options
        finally:
            await db.close()
    db = await open_database(db_url, max_size=1, statement_timeout=2.0)
    try:
        assert db.answer_within == 12.0
    finally:
        await db.close()


async def stop_while_frozen(
    worker: Any, relay: Relay, freeze: Callable[[Any], Awaitable[None]]
) -> None:
    """Run ``worker`` until idle, let ``freeze`` leave a statement in flight on a server that
    stopped answering, then stop the worker: it must exit well before the statement's own
    bound (1 h + 10 s in these tests)."""
    from tests.integration.test_worker_runtime import idle

    stopped = anyio.Event()

    async def run() -> None:
        await worker.run()
        stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await until(lambda: idle(worker), what="the worker to idle")
        await freeze(worker)
        worker.stop()
        try:
            with anyio.fail_after(60):
                await stopped.wait()
        finally:
            relay.thaw()  # a failure ends the test, not a one-hour wait


async def test_a_stopping_worker_does_not_wait_for_a_claim_the_database_never_answers(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim is shielded (a committed one must reach the executor), so on a server that
    stopped answering a worker told to stop waited for the statement's own bound (70 s by
    default; an hour here), its grace, final writes and a second signal behind it. Now the
    claim gets a moment more, then the stop goes on (final writes and pool close are bounded
    on their own: ~17 s in all here). The release of a lost claim's jobs before a claim is
    shielded the same way; cut short, it was followed by a claim (2 s more)."""
    from service.worker.main import Worker
    from tests.integration.test_worker_runtime import PROFILE, Probe, registry_for, settings

    claims: list[bool] = []  # whether the worker was stopping when each claim began
    workers: list[Worker] = []
    real_claim = JobRepository.claim

    async def claim(self: JobRepository, *args: Any, **kwargs: Any) -> Any:
        claims.append(workers[-1].status.state == "draining")
        return await real_claim(self, *args, **kwargs)

    monkeypatch.setattr(JobRepository, "claim", claim)
    for release_first in (False, True):  # a claim in flight; the release before one
        async with relay_to(db_url) as (relay, url):
            config = settings(db_statement_timeout=3600.0, worker_shutdown_grace=1.0)
            worker = Worker(config, url, [PROFILE], registry_for(Probe()))
            workers.append(worker)

            async def claim_in_flight(worker: Worker, first: bool = release_first) -> None:
                loop = worker._loops[PROFILE]
                relay.freeze()
                loop._orphans_possible = first
                loop.notify()  # which the frozen server never answers
                await until(lambda c=loop: c._shielded is not None, what="a statement in flight")

            await stop_while_frozen(worker, relay, claim_in_flight)
        assert True not in claims, f"a claim began after the stop ({release_first=})"


async def test_a_stopping_worker_does_not_wait_for_a_lookup_or_a_failure_never_answered(
    db_url: str, repo: JobRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two more waits on the way to a graceful exit, on a server that stopped answering: the
    idle claim loop's lookup of when its next job is due, and the write of a job's failure
    (its handler raised). Each waited for the statement's own bound (70 s by default; an hour
    here), past Kubernetes' termination grace: the pod was killed before its final release.
    Now stop() cuts the lookup short, and the end of the grace cuts the failure's write short
    as it cuts handlers short (the job is released with the rest)."""
    from service.handlers.base import HandlerRegistry
    from service.jobs import Job
    from service.worker.main import Worker
    from tests.integration.test_worker_runtime import PROFILE, Probe, nj, registry_for
    from tests.integration.test_worker_runtime import settings as worker_settings

    frozen = anyio.Event()

    def freezing(relay: Relay, real: Any) -> Any:
        async def call(self: JobRepository, *args: Any, **kwargs: Any) -> Any:
            if armed:
                relay.freeze()
                frozen.set()
            return await real(self, *args, **kwargs)

        return call

    async def raises(job: Job) -> Any:
        raise RuntimeError("boom")

    failing = HandlerRegistry()
    failing.register(["llm_chat"], PROFILE, raises)
    for case in ("lookup", "failure"):
        armed, frozen = False, anyio.Event()
        async with relay_to(db_url) as (relay, url):
            name = "seconds_until_due" if case == "lookup" else "fail"
            monkeypatch.setattr(JobRepository, name, freezing(relay, getattr(JobRepository, name)))
            config = worker_settings(db_statement_timeout=3600.0, worker_shutdown_grace=1.0)
            registry = registry_for(Probe()) if case == "lookup" else failing
            worker = Worker(config, url, [PROFILE], registry)

            async def statement_in_flight(
                worker: Worker, case: str = case, frozen: anyio.Event = frozen
            ) -> None:
                nonlocal armed
                armed = True
                if case == "lookup":
                    worker._loops[PROFILE].notify()  # a claim finds nothing, then looks up
                else:
                    await repo.create(nj())
                with anyio.fail_after(60):
                    await frozen.wait()

            await stop_while_frozen(worker, relay, statement_in_flight)
            monkeypatch.undo()
