"""``ai-service dev`` before anything starts: without the embedded PostgreSQL installed (the
production image, or a ``pip install ai-service`` without the ``embedded`` extra) one clear
line naming the two ways out, exit code 2; a bad setting refused before a database is started;
and the embedded server's stop protected from a second signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import build_parser
from service.config import FIELDS, ConfigError, Settings
from service.dev import NO_EMBEDDED, _signals_held, local_hosts, run_dev
from service.worker.registry import EXTRA_HANDLERS_ENV, check_extra_handlers


def test_dev_without_the_embedded_extra_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "service.db.embedded", None)  # import fails, as uninstalled
    with caplog.at_level("ERROR", logger="ai_service.dev"):
        assert run_dev(Settings(), prepare=lambda url, ours: None) == NO_EMBEDDED == 2
    assert "pip install 'ai-service[embedded]'" in caplog.text and "DATABASE_URL" in caplog.text


def test_dev_refuses_bad_extra_handlers_before_starting_postgres(tmp_path: Path) -> None:
    """A typo in AI_SERVICE_EXTRA_HANDLERS is a configuration error (one line, exit 2) found
    before an embedded PostgreSQL is initialised for a worker that could not be built."""
    data = tmp_path / "pgdata"
    clean = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    env = {**clean, "EMBEDDED_PG_DATA": str(data), "AI_SERVICE_EXTRA_HANDLERS": "no_such:mod"}
    done = subprocess.run([sys.executable, "-m", "service", "dev"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("ai-service: configuration error: AI_SERVICE_EXTRA_HANDLERS")
    assert "Traceback" not in done.stderr and not data.exists()


def test_signals_during_the_embedded_stop_are_noted_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second Ctrl-C or SIGTERM while ``pg_ctl stop`` runs would kill the process and leave
    a ``postgres`` behind; it is logged instead, and the handlers are put back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    with caplog.at_level("WARNING", logger="ai_service.dev"), _signals_held():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):  # (Python runs handlers between bytecodes: let it)
            if caplog.text.count("stopping the embedded PostgreSQL first") == 2:
                break
    assert "(SIGTERM noted)" in caplog.text and "(SIGINT noted)" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is before


def test_infra_sidecar_port_is_checked() -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["infra-sidecar", "--port", "70000"])
    assert exit_.value.code == 2


def test_extra_handler_specs_fail_as_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed spec, a missing module or function, and a register function that raises
    are each one ConfigError line naming the variable, not a traceback from the operator's
    code."""
    cases = {
        "no_colon": "expected module:function",
        "no_such_module:register": "cannot load",
        "tests.worker_handlers:no_such_function": "cannot load",
        "json:loads": "failed",  # a callable that raises on a registry
    }
    for spec, message in cases.items():
        monkeypatch.setenv(EXTRA_HANDLERS_ENV, spec)
        with pytest.raises(ConfigError, match=message) as err:
            check_extra_handlers()
        assert str(err.value).startswith(EXTRA_HANDLERS_ENV)
    monkeypatch.setenv(EXTRA_HANDLERS_ENV, "tests.worker_handlers:register")
    check_extra_handlers()  # a good one loads


def test_dev_listens_on_this_machine_only_unless_told_otherwise() -> None:
    """No token and a PostgreSQL that trusts local users: `make run` must not open them to
    the network; the services' own default (0.0.0.0, for containers) stays as it is."""
    assert (Settings().http_host, Settings().worker_http_host) == ("0.0.0.0", "0.0.0.0")
    local = local_hosts(Settings(), {})
    assert (local.http_host, local.worker_http_host) == ("127.0.0.1", "127.0.0.1")
    env = {"HTTP_HOST": "0.0.0.0", "WORKER_HTTP_HOST": "::"}
    chosen = local_hosts(Settings.from_env(env), env)
    assert (chosen.http_host, chosen.worker_http_host) == ("0.0.0.0", "::")
