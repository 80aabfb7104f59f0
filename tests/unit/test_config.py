"""Settings: the seed's variables and defaults, Go-style durations, one-line errors, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import (
    FIELDS,
    ConfigError,
    Secret,
    Settings,
    format_duration,
    parse_duration,
)

SEED_DEFAULTS = {
    "HTTP_HOST": "0.0.0.0",
    "HTTP_PORT": 8080,
    "MIGRATE_ON_START": True,
    "LLM_MODEL": "qwen2.5-14b",
    "LLM_TIMEOUT": 300.0,
    "VOXTRAL_MODEL": "mistralai/Voxtral-Small-24B-2507",
    "WORKER_HTTP_HOST": "0.0.0.0",
    "WORKER_HTTP_PORT": 8081,
    "WORKER_CLAIM_LIMIT": 4,
    "WORKER_LEASE_TIMEOUT": 900.0,
}
SEED_VARIABLES = [
    "HTTP_HOST", "HTTP_PORT", "DATABASE_URL", "MIGRATE_ON_START", "AI_SERVICE_TOKEN",
    "LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL", "LLM_TIMEOUT", "VOXTRAL_BASE_URL",
    "VOXTRAL_MODEL", "VOXTRAL_API_KEY", "AUDIO_LLM_API_KEY", "AUDIO_LLM_PROMPT", "WORKER_ID",
    "WORKER_HTTP_HOST", "WORKER_HTTP_PORT", "WORKER_POLL_INTERVAL", "WORKER_CLAIM_LIMIT",
    "WORKER_LEASE_TIMEOUT",
]  # fmt: skip


def test_every_seed_variable_is_a_setting() -> None:
    names = {f.env for f in FIELDS}
    assert set(SEED_VARIABLES) <= names


def test_seed_defaults() -> None:
    s = Settings.from_env({})
    by_env = {f.env: getattr(s, f.attr) for f in FIELDS}
    for env, value in SEED_DEFAULTS.items():
        assert by_env[env] == value, env
    assert s.worker_poll_interval == 30.0  # the fallback poll; NOTIFY wakes workers at once
    assert s.database_url is None
    assert s.worker_id  # hostname


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5s", 1.5),
     ("90", 90.0), ("1h0m10s", 3610.0), ("250us", 0.00025)],
)  # fmt: skip
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 m", "m", "5x", "-1s", "1h-5m", "abc", "5m3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r".*"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for s in (0.5, 2.0, 300.0, 5400.0, 3610.0):
        assert parse_duration(format_duration(s)) == s


def test_bad_values_are_named_with_what_is_expected() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"WORKER_CLAIM_LIMIT": "lots", "LLM_TIMEOUT": "soon"})
    text = str(err.value)
    assert "WORKER_CLAIM_LIMIT='lots' is invalid: expected an integer 1-10000" in text
    assert "LLM_TIMEOUT='soon' is invalid: expected a duration" in text
    assert "\n" not in text


def test_secret_values_are_never_shown() -> None:
    s = Settings.from_env(
        {"AI_SERVICE_TOKEN": "tok-1,tok-2", "LLM_API_KEY": "sk-live-123",
         "DATABASE_URL": "postgresql://u:hunter2@db/x"}
    )  # fmt: skip
    text = repr(s) + str(s)
    for secret in ("tok-1", "sk-live-123", "hunter2"):
        assert secret not in text
    assert s.tokens == ("tok-1", "tok-2")
    assert repr(Secret("x")) == "Secret('**********')"
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"DATABASE_URL": "mysql://root:hunter2@db"})
    assert "hunter2" not in str(err.value)
    assert "DATABASE_URL=<hidden>" in str(err.value)


def test_a_database_url_libpq_cannot_parse_is_refused_without_showing_it() -> None:
    """libpq's own message for these quotes the password (or the whole URL), and the driver
    raised it as a traceback from every command: refused with the settings instead."""
    for url in (
        "postgresql://u:hunter2%zz@db/x",
        "postgresql://u:hunter2@[::1:5432/x",
        "postgresql://u:Sup3r@hunter2@db.internal:5432/x",  # an unencoded @: it was the host
        "postgresql://u:pw/hunter2@db/x",  # an unencoded /, then an @: the database name
    ):
        with pytest.raises(ConfigError) as err:
            Settings.from_env({"DATABASE_URL": url})
        assert "hunter2" not in str(err.value)
        assert "DATABASE_URL=<hidden> is invalid: expected a postgresql:// URL" in str(err.value)
    done = _cli({"DATABASE_URL": "postgresql://u:hunter2%zz@db/x"}, "migrate")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    ok = Settings.from_env({"DATABASE_URL": "postgresql://u:hunter2%25zz@db/x?sslmode=require"})
    assert ok.database_url is not None


def test_a_bad_url_is_shown_without_its_credentials() -> None:
    bad = {
        "htp://user:llmpw-SECRET@host": "'htp://***@host'",
        "user:llmpw-SECRET@gpu:8000/v1": "'***@gpu:8000/v1'",
        "http:// user:llm/pw@-SECRET@host": "'http://***@host'",
    }
    for env in ("LLM_BASE_URL", "VOXTRAL_BASE_URL", "INFRA_STATUS_URL"):
        for value, shown in bad.items():
            with pytest.raises(ConfigError) as err:
                Settings.from_env({env: value})
            assert "SECRET" not in str(err.value) and "llmpw" not in str(err.value)
            assert f"{env}={shown} is invalid: expected an http(s) URL" in str(err.value)
    query = {  # a base URL takes no query: keys go in *_API_KEY
        "https://gpu/v1?api-key=llmpw-SECRET": "'https://gpu/v1?***'",
        "https://u:llmpw@gpu/v1?k=1@SECRET#x": "'https://***'",
        "https://llmuser:s3cr#SECRET@gpu/v1": "'https://***'",
        "https://llmuser:s3cr?SECRET@gpu/v1?k=llmpw": "'https://***'",
    }
    for value, shown in query.items():
        with pytest.raises(ConfigError) as err:
            Settings.from_env({"LLM_BASE_URL": value})
        assert "SECRET" not in str(err.value) and "llmpw" not in str(err.value)
        assert f"LLM_BASE_URL={shown} is invalid" in str(err.value)
    done = _cli({"LLM_BASE_URL": "htp://user:llmpw-SECRET@host"}, "migrate")
    assert done.returncode == 2
    assert "LLM_BASE_URL='htp://***@host' is invalid" in done.stderr
    assert "SECRET" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "value",
    ["http://h:abc", "http://h:8000:9", "http://[zz]", "http://h\x7f", "http://127.0.0.1:99999",
     "http://h:-1", "http://h:0", "http://:8000", "http://@", "http://h:8_080",
     "http://user:llmpw-SECRET@h:abc"],
)  # fmt: skip
def test_a_url_httpx_cannot_use_is_refused_at_start(value: str) -> None:
    """These passed the scheme check and failed at the first request: a traceback from
    ``dev`` after PostgreSQL had started, or every job failing as ``internal``."""
    for env in ("LLM_BASE_URL", "VOXTRAL_BASE_URL", "INFRA_STATUS_URL"):
        with pytest.raises(ConfigError) as err:
            Settings.from_env({env: value})
        assert f"{env}=" in str(err.value) and "expected an http(s) URL" in str(err.value)
        assert "SECRET" not in str(err.value)


def test_urls_httpx_reads_are_kept() -> None:
    for value in ("http://[::1]:8000", "https://gpu.internal:8443/v1", "http://bücher.de:1"):
        assert Settings.from_env({"LLM_BASE_URL": value + "/"}).llm_base_url == value


def test_a_provider_key_that_cannot_be_a_header_is_refused_without_showing_it() -> None:
    """Accepted before, it failed every job, and the encoder's message stored with each one
    quoted a character of the key and its position."""
    for env in ("LLM_API_KEY", "VOXTRAL_API_KEY", "AUDIO_LLM_API_KEY"):
        for value in ("sk-SECRÉT", "sk-SEC\nRET", "sk SECRET"):
            with pytest.raises(ConfigError) as err:
                Settings.from_env({env: value})
            assert f"{env}=<hidden> is invalid: expected a key of visible ASCII" in str(err.value)
            assert "SEC" not in str(err.value)
    assert Settings.from_env({"LLM_API_KEY": " sk-a/b+c= "}).llm_api_key == Secret("sk-a/b+c=")


def test_integers_are_ascii_digits() -> None:
    for value in ("8_080", "\u0668\u0660\u0668\u0660", "+8080", "8080.0"):
        with pytest.raises(ConfigError, match="HTTP_PORT"):
            Settings.from_env({"HTTP_PORT": value})
    assert Settings.from_env({"HTTP_PORT": " 8080 "}).http_port == 8080


def test_a_token_variable_that_names_no_token_is_refused() -> None:
    # Set but empty after splitting: "auth on" with nothing to accept used to let all in.
    # Blank too: an empty key of a Kubernetes Secret sets the variable to "", and reading that
    # as "unset" turned authentication off. And the example Secret's placeholder, unedited.
    # And a token no header can carry (non-ASCII, a space inside): it started, and never matched.
    for value in (",", " , ", ",, ,", "", "  ", "CHANGE-ME", "tok-1,change-me", "tök€n",
                  "tok-1,tok 2"):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            Settings.from_env({"AI_SERVICE_TOKEN": value})
        assert "AI_SERVICE_TOKEN=<hidden> is invalid: expected comma-separated" in str(err.value)
        assert "unset the variable to run without authentication" in str(err.value)
    assert Settings.from_env({}).auth_required is False  # unset: open, as the seed
    on = Settings.from_env({"AI_SERVICE_TOKEN": " tok-1 ,"})
    assert on.auth_required and on.tokens == ("tok-1",)
    done = _cli({"AI_SERVICE_TOKEN": " , "}, "migrate")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "AI_SERVICE_TOKEN=<hidden> is invalid" in done.stderr
    assert "Traceback" not in done.stderr


def test_voxtral_key_falls_back_to_audio_then_llm_key() -> None:
    assert Settings.from_env({"LLM_API_KEY": "a"}).voxtral_key == Secret("a")
    both = {"LLM_API_KEY": "a", "AUDIO_LLM_API_KEY": "b"}
    assert Settings.from_env(both).voxtral_key == Secret("b")
    assert Settings.from_env({**both, "VOXTRAL_API_KEY": "c"}).voxtral_key == Secret("c")
    assert Settings.from_env({}).voxtral_key is None


def test_per_profile_claim_limits() -> None:
    s = Settings.from_env({"WORKER_CLAIM_LIMITS": "voxtral-small=8, qwen2.5-14b=16"})
    assert s.claim_limit("voxtral-small") == 8
    assert s.claim_limit("qwen2.5-14b") == 16
    assert s.claim_limit("other") == 4
    for bad in ("voxtral-small", "a=1,a=2", "a=1_0", "a=0"):  # a profile twice: which one?
        with pytest.raises(ConfigError, match="WORKER_CLAIM_LIMITS"):
            Settings.from_env({"WORKER_CLAIM_LIMITS": bad})


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_sql_directory_without_the_sql_files_stops_every_database_command(
    tmp_path: Path,
) -> None:
    """Found no migrations, `migrate --check` passed an empty database (an init container's
    gate) and the API failed on its first query."""
    env = {"AI_SERVICE_SQL_DIR": str(tmp_path), "DATABASE_URL": "postgresql://u@127.0.0.1:1/x"}
    for command in (["migrate", "--check"], ["migrate"], ["api"], ["worker"]):
        done = _cli(env, *command)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.strip() == (
            f"ai-service: configuration error: no SQL files in {tmp_path} (queries.sql and "
            "0001_*.sql expected): AI_SERVICE_SQL_DIR must name the sql/ directory"
        )


def test_cli_bad_value_exits_2_with_one_line_and_no_traceback() -> None:
    done = _cli({"WORKER_LEASE_TIMEOUT": "forever"}, "migrate")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "WORKER_LEASE_TIMEOUT='forever'" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["api", "worker", "migrate"])
def test_production_commands_require_database_url(command: str) -> None:
    done = _cli({}, command)
    assert done.returncode == 2
    assert "DATABASE_URL is not set" in done.stderr
    assert "ai-service dev" in done.stderr


def test_the_sidecars_vllm_urls_are_checked_like_the_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import build_parser

    parser = build_parser()
    for bad in ("q=http://h:abc/metrics", "q=http://u:pw-SECRET@h:99999/metrics", "q=ftp://h"):
        with pytest.raises(SystemExit) as done:
            parser.parse_args(["infra-sidecar", "--vllm", bad])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert "argument --vllm: expected NAME=http(s)://host:port/metrics" in err
        assert "SECRET" not in err
    ok = parser.parse_args(["infra-sidecar", "--vllm", " q = http://h:8000/metrics "])
    assert ok.vllm == [("q", "http://h:8000/metrics")]
