"""Settings: every environment variable the service reads, typed and validated once at start.

Why one table of fields: the seed service's variables are a public contract, so each one is
declared exactly once here with its default and a one-line meaning; the README, the deploy
manifests and a test all check against this table (``FIELDS``). A bad value stops start-up
with one line naming the variable, the value and what was expected (``ConfigError``) rather
than a traceback deep inside a worker loop.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """One or more settings are invalid; ``str()`` is one line per bad variable."""


class Secret:
    """A string that never shows itself in ``repr``/``str``/logs; call ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``500ms``, ``2s``, ``5m``, ``1h30m``) into seconds.

    A bare number is taken as seconds, because ``WORKER_LEASE_TIMEOUT=900`` is what people type.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    try:
        seconds = float(s)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(s):
            if m.start() != pos:
                raise ValueError(s) from None
            seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError(s) from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(s)
    return seconds


def format_duration(seconds: float) -> str:
    """Inverse of ``parse_duration`` for documentation and ``/worker/status``."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return out or "0s"


def _bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _int(text: str) -> int:
    """ASCII digits only: ``int()`` also takes ``8_080`` and other scripts' digits, which no
    operator means and a shell or YAML typo can produce."""
    v = text.strip()
    if not re.fullmatch(r"-?[0-9]+", v):
        raise ValueError(text)
    return int(v)


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        n = _int(text)
        if not lo <= n <= hi:
            raise ValueError(text)
        return n

    return parse


def _duration_range(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        d = parse_duration(text)
        if not lo <= d <= hi:
            raise ValueError(text)
        return d

    return parse


def _retention(text: str) -> float:
    """0 (keep every job) or at least an hour: the stats read the last hour of history."""
    d = parse_duration(text)
    if d and not 3600 <= d <= 100 * 365 * 86400:
        raise ValueError(text)
    return d


def http_url(text: str) -> str:
    """An http(s) URL with a host, and a port 1-65535 if it names one, that httpx reads.
    Checked in full here: a bad port (``http://h:abc``, ``:99999``) or an empty host otherwise
    surfaced at the first request, as a traceback at start-up or as every job failing with
    ``internal``."""
    import httpx  # here: most commands that read the settings never make a request

    v = text.strip()
    if not re.match(r"^https?://[^\s/]+", v):
        raise ValueError(text)
    parts = urlsplit(v)  # ValueError: a port that is not a number 0-65535, a bad [literal]
    if not parts.hostname or parts.port == 0:
        raise ValueError(text)
    try:
        httpx.URL(v)
    except httpx.InvalidURL:
        raise ValueError(text) from None
    return v.rstrip("/")


def _base_url(text: str) -> str:
    """An inference server's base URL: ``/v1/...`` paths are appended to it, so a query or
    fragment would end up in the middle of every request's URL (keys go in *_API_KEY)."""
    v = http_url(text)
    if "?" in v or "#" in v:
        raise ValueError(text)
    return v


def _db_url(text: str) -> Secret:
    """Parsed here, as libpq will: a URL it cannot parse (a password with a stray ``%`` or
    ``[``) raised later, in the driver, with a message that quotes the password."""
    from service.db.params import parses  # here: importing the settings needs no driver

    v = text.strip()
    if not (v.startswith(("postgresql://", "postgres://")) or "=" in v):
        raise ValueError("not a PostgreSQL URL")
    if not parses(v):
        raise ValueError("not parsed by libpq")
    return Secret(v)


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")  # what a header value carries unquoted


def _api_key(text: str) -> Secret:
    """A provider key, sent as ``Authorization: Bearer <key>``: visible ASCII only. Anything
    else cannot go in a header, and the encoder's error — quoting a character of the key and
    its position — would otherwise become every job's stored error message."""
    v = text.strip()
    if v and not _VISIBLE_ASCII.fullmatch(v):
        raise ValueError("not visible ASCII")
    return Secret(v)


PLACEHOLDER_TOKENS = frozenset({"change-me", "changeme"})  # deploy/k8s/secret.example.yaml's


def _tokens(text: str) -> Secret:
    """Bearer tokens. A set value that names none (``""``, ``,``) is refused: read as "auth
    on" it would accept nothing, read as "off" it would open the API the operator meant to
    close (an empty key of a Kubernetes Secret sets the variable to ""). So is the example
    Secret's placeholder, left unedited."""
    tokens = _list(text)
    if not tokens or any(t.lower() in PLACEHOLDER_TOKENS for t in tokens):
        raise ValueError(text)
    if not all(_VISIBLE_ASCII.fullmatch(t) for t in tokens):
        raise ValueError(text)  # a header carries visible ASCII: another token never matched
    return Secret(text.strip())


def hide_credentials(text: str) -> str:
    """A bad value as the error shows it: a URL's ``user:password@`` becomes ``***@``, and
    its query and fragment (``?api-key=…``) ``?***``; with both, all but the scheme is
    hidden. Everything up to the last ``@`` counts, so a password with an unescaped ``/`` or
    ``@`` is hidden too; applied to every shown value, since a URL may be typed anywhere."""
    scheme, sep, _ = text.partition("://")
    if "@" in text and ("?" in text or "#" in text):
        # which @ ends the credentials cannot be told (a password with an unescaped ? or #,
        # a query value with an @): show the scheme alone
        return f"{scheme}{sep}***" if sep else "***"
    for mark in ("?", "#"):
        text, cut, _ = text.partition(mark)
        text += f"{cut}***" if cut else ""
    head, at, host = text.rpartition("@")
    if not at:
        return text
    scheme, sep, _ = head.partition("://")
    return f"{scheme}{sep}***@{host}" if sep else f"***@{host}"


def _str(text: str) -> str:
    v = text.strip()
    if not v:
        raise ValueError(text)
    return v


def _list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOST_NAME = re.compile(rf"\.?{_LABEL}(?:\.{_LABEL})*")


def _hosts(text: str) -> tuple[str, ...]:
    """Host names, lower-cased without a final dot as audio_url hosts are compared. An entry
    that is a URL, has a port, a ``*.`` wildcard or a space could never match, and every
    audio_url job would be refused, with no hint at start-up."""
    out: list[str] = []
    for entry in _list(text):
        host = entry.lower().rstrip(".")
        if not _HOST_NAME.fullmatch(host):
            try:  # an address, written as a URL's host is
                host = str(ipaddress.ip_address(host.removeprefix("[").removesuffix("]")))
            except ValueError:
                raise ValueError(entry) from None
        out.append(host)
    return tuple(out)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``AUDIO_URL_ALLOWED_NETWORKS`` entries as networks; ``ConfigError`` names a bad one."""
    out: list[IPNetwork] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"AUDIO_URL_ALLOWED_NETWORKS={v!r} is invalid: expected an IP network like "
                "10.2.3.0/24 or an address like 10.2.3.7"
            ) from None
    return tuple(out)


def _networks(text: str) -> tuple[str, ...]:
    """IP networks or addresses, checked here so every process refuses a bad one at start-up
    (the API judges literal audio_url addresses with them too, not only the workers)."""
    entries = _list(text)
    parse_networks(entries)  # ConfigError is a ValueError: the usual one-line error
    return entries


def _limits(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in _list(text):
        name, sep, num = part.rpartition("=")
        if not sep or not name.strip():
            raise ValueError(text)
        n = _int(num)
        if not 1 <= n <= 10_000 or name.strip() in out:  # a profile twice: which one is meant?
            raise ValueError(text)
        out[name.strip()] = n
    return out


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        v = text.strip().lower()
        if v not in options:
            raise ValueError(text)
        return v

    return parse


@dataclass(frozen=True)
class Field:
    """One environment variable: its parser, default (raw text or None) and what it expects."""

    env: str
    attr: str
    parse: Callable[[str], Any]
    default: str | None
    expects: str
    help: str
    secret: bool = False
    blank_is_unset: bool = True  # "" reads as unset (for a token it would mean "auth off")


_MiB = 1024 * 1024

FIELDS: Final[tuple[Field, ...]] = (
    # --- HTTP API --------------------------------------------------------------------------
    Field("HTTP_HOST", "http_host", _str, "0.0.0.0", "a host or address", "API listen address"),
    Field("HTTP_PORT", "http_port", _int_range(0, 65535), "8080", "a port 0-65535", "API port"),
    Field(
        "AI_SERVICE_TOKEN",
        "api_tokens",
        _tokens,
        None,
        "comma-separated bearer tokens of visible ASCII (at least one, not the example's "
        "CHANGE-ME; unset the variable to run without authentication)",
        "required bearer token(s) for /api/v1/*; several for rotation",
        secret=True,
        blank_is_unset=False,
    ),
    Field(
        "MAX_BATCH_SIZE",
        "max_batch_size",
        _int_range(1, 100_000),
        "10000",
        "an integer 1-100000",
        "most jobs in one POST /api/v1/jobs/batch",
    ),
    Field(
        "MAX_REQUEST_BYTES",
        "max_request_bytes",
        _int_range(1024, 1024 * _MiB),
        str(10 * _MiB),
        "a byte count 1024-1073741824",
        "request bodies larger than this get 413",
    ),
    # --- Database --------------------------------------------------------------------------
    Field(
        "DATABASE_URL",
        "database_url",
        _db_url,
        None,
        "a postgresql:// URL libpq can parse (percent-encode %, @, /, [ in a password)",
        "PostgreSQL; unset in `ai-service dev` starts an embedded server",
        secret=True,
    ),
    Field(
        "MIGRATE_ON_START", "migrate_on_start", _bool, "true", "true or false", "migrate at start"
    ),
    Field(
        "DB_POOL_SIZE",
        "db_pool_size",
        _int_range(1, 500),
        "10",
        "an integer 1-500",
        "max pooled connections per process (the LISTEN connection is extra)",
    ),
    Field(
        "DB_POOL_TIMEOUT",
        "db_pool_timeout",
        _duration_range(0.1, 300),
        "5s",
        "a duration like 5s (0.1s-5m)",
        "longest wait for a pooled connection; then the API answers 503 (database down or "
        "every connection busy) and the worker retries",
    ),
    Field(
        "DB_STATEMENT_TIMEOUT",
        "db_statement_timeout",
        _duration_range(0, 86400),
        "60s",
        "a duration like 60s (0 disables)",
        "longest a statement may run, and a transaction stay idle, on the API's and workers' "
        "pooled connections; the API answers 503 and the worker retries",
    ),
    Field(
        "EMBEDDED_PG_DATA",
        "embedded_pg_data",
        _str,
        "./.ai-service/pgdata",
        "a directory path",
        "data directory of the embedded PostgreSQL used by `ai-service dev`",
    ),
    # --- Jobs ------------------------------------------------------------------------------
    Field(
        "JOB_MAX_ATTEMPTS",
        "job_max_attempts",
        _int_range(1, 100),
        "3",
        "an integer 1-100",
        "default max_attempts of a new job",
    ),
    Field(
        "RETRY_BACKOFF_BASE",
        "retry_backoff_base",
        _duration_range(0, 86400),
        "5s",
        "a duration like 5s",
        "first retry delay; doubles per attempt, with jitter",
    ),
    Field(
        "RETRY_BACKOFF_MAX",
        "retry_backoff_max",
        _duration_range(0, 7 * 86400),
        "10m",
        "a duration like 10m",
        "cap on the retry delay",
    ),
    Field(
        "JOB_RETENTION",
        "job_retention",
        _retention,
        "0",
        "0 or a duration of at least 1h, like 720h",
        "delete completed, failed and cancelled jobs this long after they finished (their "
        "idempotency keys go with them); 0 keeps every job, as the seed service did",
    ),
    # --- Inference providers ---------------------------------------------------------------
    Field(
        "LLM_BASE_URL",
        "llm_base_url",
        _base_url,
        None,
        "an http(s) URL with a host, a port 1-65535 if any, and without a query (a key goes in "
        "LLM_API_KEY)",
        "primary LLM endpoint",
    ),
    Field(
        "LLM_API_KEY",
        "llm_api_key",
        _api_key,
        None,
        "a key of visible ASCII characters",
        "LLM API key",
        secret=True,
    ),
    Field("LLM_MODEL", "llm_model", _str, "qwen2.5-14b", "a model name", "LLM model/profile"),
    Field(
        "LLM_TIMEOUT",
        "llm_timeout",
        _duration_range(0.001, 86400),
        "5m",
        "a duration like 5m",
        "timeout of one LLM call",
    ),
    Field(
        "VOXTRAL_BASE_URL",
        "voxtral_base_url",
        _base_url,
        None,
        "an http(s) URL with a host, a port 1-65535 if any, and without a query (a key goes in "
        "VOXTRAL_API_KEY)",
        "Voxtral endpoint",
    ),
    Field(
        "VOXTRAL_MODEL",
        "voxtral_model",
        _str,
        "mistralai/Voxtral-Small-24B-2507",
        "a model name",
        "model name sent to the Voxtral endpoint",
    ),
    Field(
        "VOXTRAL_API_KEY",
        "voxtral_api_key",
        _api_key,
        None,
        "a key of visible ASCII characters",
        "Voxtral key; falls back to AUDIO_LLM_API_KEY, then LLM_API_KEY",
        secret=True,
    ),
    Field(
        "AUDIO_LLM_API_KEY",
        "audio_llm_api_key",
        _api_key,
        None,
        "a key of visible ASCII characters",
        "fallback key for Voxtral",
        secret=True,
    ),
    Field(
        "AUDIO_LLM_PROMPT",
        "audio_llm_prompt",
        str,
        "",
        "text",
        "sent as the transcription `prompt` (vLLM's Voxtral ignores it)",
    ),
    Field(
        "TRANSCRIPTION_TIMEOUT",
        "transcription_timeout",
        _duration_range(0.001, 86400),
        "10m",
        "a duration like 10m",
        "timeout of one transcription call",
    ),
    Field(
        "INFRA_STATUS_URL",
        "infra_status_url",
        http_url,
        None,
        "an http(s) URL with a host and a port 1-65535 if any",
        "the AI server's infra sidecar (http://host:9400 or its /infra/status URL), "
        "relayed at GET /api/v1/infra/status",
    ),
    # --- Worker ----------------------------------------------------------------------------
    Field("WORKER_ID", "worker_id", _str, None, "a name", "worker identity; default hostname"),
    Field(
        "WORKER_EXTERNAL_TASK_TYPES",
        "worker_external_task_types",
        _list,
        "",
        "comma-separated task types",
        "task types external workers claim (POST /api/v1/jobs/claim): built-in workers leave "
        "them pending instead of failing them as unsupported_task",
    ),
    Field("WORKER_HTTP_HOST", "worker_http_host", _str, "0.0.0.0", "a host", "worker HTTP addr"),
    Field(
        "WORKER_HTTP_PORT",
        "worker_http_port",
        _int_range(0, 65535),
        "8081",
        "a port 0-65535",
        "worker HTTP port (healthz, readyz, worker/status)",
    ),
    Field(
        "WORKER_POLL_INTERVAL",
        "worker_poll_interval",
        _duration_range(0.01, 86400),
        "30s",
        "a duration like 30s",
        "fallback poll when idle; NOTIFY wakes workers at once",
    ),
    Field(
        "WORKER_CLAIM_LIMIT",
        "worker_claim_limit",
        _int_range(1, 10_000),
        "4",
        "an integer 1-10000",
        "jobs in flight per profile per worker process",
    ),
    Field(
        "WORKER_CLAIM_LIMITS",
        "worker_claim_limits",
        _limits,
        "",
        "profile=N pairs (N 1-10000, each profile once), comma-separated",
        "per-profile overrides of WORKER_CLAIM_LIMIT",
    ),
    Field(
        "WORKER_LEASE_TIMEOUT",
        "worker_lease_timeout",
        _duration_range(1, 7 * 86400),
        "15m",
        "a duration like 15m (at least 1s)",
        "lease of a claimed job; renewed every lease/3",
    ),
    Field(
        "WORKER_PROFILES",
        "worker_profiles",
        _list,
        "",
        "comma-separated model profiles",
        "profiles a worker serves; default: those of configured built-in handlers",
    ),
    Field(
        "WORKER_SHUTDOWN_GRACE",
        "worker_shutdown_grace",
        _duration_range(0, 86400),
        "30s",
        "a duration like 30s",
        "time in-flight jobs get to finish after SIGTERM",
    ),
    Field(
        "WORKER_NOTIFY",
        "worker_notify",
        _bool,
        "true",
        "true or false",
        "LISTEN for wake-ups; false reproduces the seed's pure polling (benchmarks only)",
    ),
    # --- Telemetry and logs ----------------------------------------------------------------
    Field(
        "LOG_LEVEL",
        "log_level",
        _choice("debug", "info", "warning", "error"),
        "info",
        "debug, info, warning or error",
        "log level",
    ),
    Field(
        "LOG_FORMAT",
        "log_format",
        _choice("json", "console"),
        "json",
        "json or console",
        "log line format (dev: console unless set)",
    ),
    Field(
        "OTEL_CAPTURE_CONTENT",
        "otel_capture_content",
        _bool,
        "false",
        "true or false",
        "record prompts and answers on GenAI spans (tracing on only); off keeps them out",
    ),
    Field(
        "OTEL_INSTRUMENT_PSYCOPG",
        "otel_instrument_psycopg",
        _bool,
        "true",
        "true or false",
        "database query spans under request and job spans (tracing on only)",
    ),
    Field(
        "OTEL_CREATE_SPANS_MAX_BATCH",
        "otel_create_spans_max_batch",
        _int_range(0, 100_000),
        "256",
        "an integer 0-100000",
        "a batch of up to this many jobs gets a create span per job (its own trace context); "
        "a larger one shares its send span's; 0: never (tracing on only)",
    ),
    Field(
        "METRICS_PORT",
        "metrics_port",
        _int_range(0, 65535),
        None,
        "a port 0-65535",
        "set: Prometheus text at /metrics on the API and worker servers, and on this port "
        "(own listener unless it is theirs; 0: none); unset: metrics go over OTLP only",
    ),
    # --- Audio download safety (transcription jobs with audio_url) -------------------------
    Field(
        "AUDIO_URL_ALLOWED_HOSTS",
        "audio_url_allowed_hosts",
        _hosts,
        "",
        "comma-separated host names (no scheme, port or path); a leading dot (.example.com) "
        "allows subdomains",
        "hosts audio_url may name; empty allows any host (addresses are still checked)",
    ),
    Field(
        "AUDIO_URL_ALLOWED_NETWORKS",
        "audio_url_allowed_networks",
        _networks,
        "",
        "comma-separated IP networks like 10.2.3.0/24",
        "non-public networks audio_url may reach (loopback/private/link-local are refused)",
    ),
    Field(
        "AUDIO_MAX_BYTES",
        "audio_max_bytes",
        _int_range(1024, 2048 * _MiB),
        str(25 * _MiB),
        "a byte count 1024-2147483648",
        "largest audio a job may download or carry; vLLM's default upload cap is 25 MiB",
    ),
)

FIELD_BY_ENV: Final = {f.env: f for f in FIELDS}


@dataclass(frozen=True)
class Settings:
    """Validated settings. Build with ``Settings.from_env()``; never mutate."""

    http_host: str = "0.0.0.0"
    http_port: int = 8080
    api_tokens: Secret | None = None
    max_batch_size: int = 10_000
    max_request_bytes: int = 10 * _MiB
    database_url: Secret | None = None
    migrate_on_start: bool = True
    db_pool_size: int = 10
    db_pool_timeout: float = 5.0
    db_statement_timeout: float = 60.0
    embedded_pg_data: str = "./.ai-service/pgdata"
    job_max_attempts: int = 3
    retry_backoff_base: float = 5.0
    retry_backoff_max: float = 600.0
    job_retention: float = 0.0
    llm_base_url: str | None = None
    llm_api_key: Secret | None = None
    llm_model: str = "qwen2.5-14b"
    llm_timeout: float = 300.0
    voxtral_base_url: str | None = None
    voxtral_model: str = "mistralai/Voxtral-Small-24B-2507"
    voxtral_api_key: Secret | None = None
    audio_llm_api_key: Secret | None = None
    audio_llm_prompt: str = ""
    transcription_timeout: float = 600.0
    infra_status_url: str | None = None
    worker_id: str = field(default_factory=socket.gethostname)
    worker_http_host: str = "0.0.0.0"
    worker_http_port: int = 8081
    worker_poll_interval: float = 30.0
    worker_claim_limit: int = 4
    worker_claim_limits: dict[str, int] = field(default_factory=dict)
    worker_lease_timeout: float = 900.0
    worker_profiles: tuple[str, ...] = ()
    worker_external_task_types: tuple[str, ...] = ()
    worker_shutdown_grace: float = 30.0
    worker_notify: bool = True
    log_level: str = "info"
    log_format: str = "json"
    otel_capture_content: bool = False
    otel_instrument_psycopg: bool = True
    otel_create_spans_max_batch: int = 256
    metrics_port: int | None = None
    audio_url_allowed_hosts: tuple[str, ...] = ()
    audio_url_allowed_networks: tuple[str, ...] = ()
    audio_max_bytes: int = 25 * _MiB

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every field from ``env`` (default ``os.environ``); raise ``ConfigError``."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        errors: list[str] = []
        for f in FIELDS:
            raw = source.get(f.env)
            if raw is None or (raw.strip() == "" and f.default is None and f.blank_is_unset):
                if f.default is None:
                    continue
                raw = f.default
            try:
                values[f.attr] = f.parse(raw)
            except (ValueError, TypeError):
                shown = "<hidden>" if f.secret else repr(hide_credentials(raw))
                errors.append(f"{f.env}={shown} is invalid: expected {f.expects}")
        if errors:
            raise ConfigError("; ".join(errors))
        settings = cls(**values)
        settings._check_relations()
        return settings

    def _check_relations(self) -> None:
        if self.retry_backoff_max < self.retry_backoff_base:
            raise ConfigError(
                f"RETRY_BACKOFF_MAX={format_duration(self.retry_backoff_max)} is invalid: "
                f"expected at least RETRY_BACKOFF_BASE={format_duration(self.retry_backoff_base)}"
            )

    # --- derived values -----------------------------------------------------------------
    @property
    def auth_required(self) -> bool:
        """Whether ``AI_SERVICE_TOKEN`` is set. The API then demands a token even if the
        value names none (possible only past ``from_env``): that must fail closed."""
        return self.api_tokens is not None

    @property
    def tokens(self) -> tuple[str, ...]:
        """Accepted bearer tokens (rotation: old and new both valid while callers switch)."""
        if not self.api_tokens:
            return ()
        return _list(self.api_tokens.reveal())

    @property
    def voxtral_key(self) -> Secret | None:
        """VOXTRAL_API_KEY, falling back to AUDIO_LLM_API_KEY, then LLM_API_KEY (seed rule)."""
        return self.voxtral_api_key or self.audio_llm_api_key or self.llm_api_key

    def claim_limit(self, profile: str) -> int:
        return self.worker_claim_limits.get(profile, self.worker_claim_limit)

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigError(
                "DATABASE_URL is not set: expected a postgresql:// URL "
                "(or run `ai-service dev`, which starts an embedded PostgreSQL)"
            )
        return self.database_url.reveal()

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)
