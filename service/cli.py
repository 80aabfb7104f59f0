"""The ``ai-service`` command: migrate, api, worker, dev (and helper servers).

Every command reads settings first; a bad value prints one line naming the variable and what
was expected, and exits 2, before anything starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

from service import telemetry
from service.config import ConfigError, Settings, hide_credentials, http_url
from service.logs import setup_logging

if TYPE_CHECKING:
    from service.serve import EmbeddedServer

log = logging.getLogger("ai_service")

EXIT_CONFIG = 2


def _die(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    print(f"ai-service: {message}", file=sys.stderr)
    raise SystemExit(code)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        _die(f"configuration error: {exc}")


def _terminate_as_exit(signum: int, frame: Any) -> None:
    # Until the event loop owns the signals, SIGTERM unwinds through `finally` blocks (so an
    # embedded PostgreSQL is stopped) instead of killing the process on the spot.
    raise SystemExit(128 + signum)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from service.db import DatabaseUnavailable
    from service.db.migrate import MigrationError, migrate, pending_migrations

    url = _require_db(settings)
    try:
        if args.check:
            pending = pending_migrations(url)
            for m in pending:
                print(f"pending: {m.version:04d}_{m.name}")
            if pending:
                return 1
            print("schema is up to date")
            return 0
        for m in migrate(url):
            print(f"applied: {m.version:04d}_{m.name}")
        print("schema is up to date")
    except MigrationError as exc:
        _die(f"migration error: {exc}", 1)
    except DatabaseUnavailable as exc:
        _db_unavailable(exc)
    return 0


def _db_unavailable(exc: Exception) -> NoReturn:
    """One line, exit 1: an init container or a Job retries; a traceback helps nobody."""
    _die(f"database unavailable: {(str(exc).strip().splitlines() or ['?'])[0]}", 1)


def _require_db(settings: Settings) -> str:
    try:
        return settings.require_database_url()
    except ConfigError as exc:
        _die(str(exc))


def _migrate_on_start(url: str, apply: bool) -> None:
    """Migrate (``apply``: ``MIGRATE_ON_START``), or else make sure someone did: a process
    on a schema that lacks a migration would report ready and then fail every statement."""
    from service.db import DatabaseUnavailable
    from service.db.migrate import MigrationError, migrate, pending_migrations

    try:
        if apply:
            for m in migrate(url):
                log.info("applied migration %04d_%s", m.version, m.name)
            return
        pending = pending_migrations(url)
    except MigrationError as exc:
        _die(f"migration error: {exc}", 1)
    except DatabaseUnavailable as exc:
        _db_unavailable(exc)
    if pending:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
        _die(
            f"the database lacks migrations {names} and MIGRATE_ON_START=false: run "
            "`ai-service migrate` (the migrate Job in Kubernetes) first",
            1,
        )


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    import anyio

    from service.api.app import close_long_polls, create_app
    from service.runtime import http_service, supervise
    from service.serve import make_server

    url = _require_db(settings)
    _migrate_on_start(url, settings.migrate_on_start)
    app = create_app(settings, database_url=url)
    server = make_server(app, settings.http_host, settings.http_port,
                         on_shutdown=partial(close_long_polls, app))  # fmt: skip
    _listen(server, "HTTP_HOST, HTTP_PORT")
    log.info("API listening on %s:%d", settings.http_host, settings.http_port)
    return anyio.run(supervise, [http_service("api", server)])


def _listen(server: EmbeddedServer, setting: str) -> None:
    """Bind now: a port taken is one line and exit 2, not uvicorn's exit mid-start."""
    try:
        server.listen(setting)
    except ConfigError as exc:
        _die(f"configuration error: {exc}")


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    url = _require_db(settings)
    from service.worker.main import run_worker_process

    _migrate_on_start(url, settings.migrate_on_start)
    profiles = args.profile or list(settings.worker_profiles)
    return run_worker_process(settings, url, profiles)


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from service.dev import run_dev
    from service.worker.registry import check_extra_handlers

    try:  # before the embedded PostgreSQL starts: a typo should not cost an initdb
        check_extra_handlers()
    except ConfigError as exc:
        _die(f"configuration error: {exc}")

    def prepare(url: str, embedded: bool) -> None:  # the embedded database is ours to migrate
        _migrate_on_start(url, embedded or settings.migrate_on_start)

    try:
        return run_dev(settings, prepare)  # main() made its hosts local
    except ConfigError as exc:  # a port taken after run_dev checked it was free
        _die(f"configuration error: {exc}")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return port


def _vllm_pair(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    try:
        checked = http_url(url)
    except ValueError:
        checked = ""
    if not sep or not name.strip() or not checked:
        shown = hide_credentials(text)
        raise argparse.ArgumentTypeError(
            f"expected NAME=http(s)://host:port/metrics, got {shown!r}"
        )
    return name.strip(), checked


def cmd_infra_sidecar(args: argparse.Namespace, settings: Settings) -> int:
    import anyio

    from service.providers.urls import redact_url
    from service.runtime import http_service, supervise
    from service.serve import make_server
    from service.sidecar.app import create_sidecar_app

    vllm = dict(args.vllm or [])
    app = create_sidecar_app(vllm, args.docker_socket)
    server = make_server(app, args.host, args.port)
    _listen(server, "--host, --port")
    log.info(
        "infra sidecar on %s:%d (vLLM metrics: %s; Docker socket %s)",
        args.host,
        args.port,
        ", ".join(f"{n}={redact_url(u)}" for n, u in vllm.items()) or "none",
        args.docker_socket,
    )
    return anyio.run(supervise, [http_service("infra-sidecar", server)])


def _add_infra_sidecar(sub: Any) -> None:
    p = sub.add_parser(
        "infra-sidecar",
        help="serve AI-server telemetry (GPUs, containers, vLLM metrics) as JSON",
        description="Runs on the AI server: GET /infra/status reports GPUs (NVML), inference "
        "containers (Docker socket, read-only) and each local vLLM's /metrics; GET /healthz. "
        "The API relays it at GET /api/v1/infra/status (INFRA_STATUS_URL).",
    )
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=9400, help="port (default 9400)")
    p.add_argument(
        "--vllm",
        action="append",
        type=_vllm_pair,
        metavar="NAME=URL",
        help="a local vLLM's Prometheus /metrics URL, e.g. qwen2.5-14b=http://qwen:8000/metrics "
        "(repeatable)",
    )
    p.add_argument(
        "--docker-socket",
        default="/var/run/docker.sock",
        metavar="PATH",
        help="Docker Engine socket (default /var/run/docker.sock); missing means unavailable",
    )
    p.set_defaults(func=cmd_infra_sidecar)


def _add_simulator(sub: Any) -> None:
    try:
        from service.simulator import cli as sim_cli
    except ImportError:  # pragma: no cover - the simulator ships with the package
        return
    p = sub.add_parser("simulate-provider", help="run the local SIMULATED inference endpoint")
    sim_cli.add_arguments(p)
    p.set_defaults(func=lambda a, s: sim_cli.main(a))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("migrate", help="apply pending database migrations")
    p.add_argument("--check", action="store_true", help="exit 1 if migrations are pending")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("api", help="serve the HTTP API (needs DATABASE_URL)")
    p.set_defaults(func=cmd_api)
    p = sub.add_parser("worker", help="run a worker (needs DATABASE_URL)")
    p.add_argument("--profile", action="append", help="model profile to serve (repeatable)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("dev", help="everything on one machine: embedded PostgreSQL, API, workers")
    p.set_defaults(func=cmd_dev)
    _add_simulator(sub)
    _add_infra_sidecar(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = _settings()
    if args.command in ("api", "worker", "dev", "migrate"):
        from service.db.queries import missing_sql

        if (why := missing_sql()) is not None:
            _die(f"configuration error: {why}")
    if args.command == "dev":  # before anything listens: the metrics port is bound below
        from service.dev import local_hosts

        settings = local_hosts(settings, os.environ)
    # dev logs for a person at a terminal, unless LOG_FORMAT asks otherwise
    dev_console = args.command == "dev" and "LOG_FORMAT" not in os.environ
    fmt = "console" if dev_console else settings.log_format
    setup_logging(settings.log_level, fmt)
    previous = {s: signal.signal(s, _terminate_as_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _setup_tracing(args.command, settings)
        _setup_metrics(args.command, settings)
        func: Callable[[argparse.Namespace, Settings], int] = args.func
        return func(args, settings)
    except KeyboardInterrupt:
        return 130
    finally:
        telemetry.shutdown()  # flush queued spans, bounded: a dead collector cannot hold us
        _shutdown_metrics()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _setup_tracing(command: str, settings: Settings) -> None:
    """Tracing for the long-running commands, before any database connection is opened."""
    if command not in telemetry.SERVICE_NAMES:
        return
    try:
        telemetry.setup(command, settings)
    except ConfigError as exc:
        _die(f"configuration error: {exc}")


def _setup_metrics(command: str, settings: Settings) -> None:
    """Metrics (OTLP and/or Prometheus /metrics) for the long-running commands."""
    if command not in ("api", "worker", "dev"):
        return
    from service.metrics.export import setup_metrics

    try:
        setup_metrics(command, settings)
    except ConfigError as exc:
        _die(f"configuration error: {exc}")


def _shutdown_metrics() -> None:
    export = sys.modules.get("service.metrics.export")
    if export is not None:
        export.shutdown_metrics()  # last export, bounded
