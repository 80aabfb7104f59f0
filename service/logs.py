"""Log setup: JSON lines in production (one object per line, machine-parsable), a readable
console format in ``dev``. Secrets never reach a log line because settings hold them as
``Secret`` objects whose ``repr`` is masked; payloads are not logged by default.

Every line emitted inside a span carries ``trace_id``/``span_id`` (to jump from a log line to
its trace in Tempo), and every line emitted while a job runs carries ``job_id``.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import msgspec
from opentelemetry import trace

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_encoder = msgspec.json.Encoder()
_job_id: ContextVar[str | None] = ContextVar("ai_service_job_id", default=None)


def reason(exc: BaseException) -> str:
    """What an exception says, for a log line or a message: its text, or its class name when
    it has none (a ``TimeoutError`` from a deadline; ``exc or ...`` never falls back, since an
    exception is always true)."""
    return str(exc) or type(exc).__name__


class ReadinessLog:
    """A readiness probe's log: one line when it turns not ready (with why), one when it is
    ready again, and nothing per probe in between: a probe every few seconds on every pod
    through an outage otherwise wrote hundreds of identical warnings."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._ready = True

    def ready(self) -> None:
        if not self._ready:
            self._log.info("ready again")
        self._ready = True

    def not_ready(self, why: str, *, expected: bool = False) -> None:
        """``expected``: not ready by design (a worker starting or draining), said at INFO."""
        if self._ready:
            self._log.log(logging.INFO if expected else logging.WARNING, "not ready: %s", why)
        self._ready = False


class FailureLog:
    """A retry loop's failures: one line for the first failure of each kind (what failed and
    the exception's class), none for its repeats until the loop works again. A listener
    retrying every few seconds through an outage wrote a line per try, and a traceback per try
    for an error not known to happen (``unexpected``: logged with its traceback, once)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._last: tuple[str, type[BaseException]] | None = None

    def failed(self, what: str, exc: BaseException, *, unexpected: bool = False) -> None:
        kind = (what, type(exc))
        if kind != self._last:
            if unexpected:
                self._log.error("%s: %s", what, reason(exc), exc_info=exc)
            else:
                self._log.warning("%s: %s", what, reason(exc))
        self._last = kind

    def recovered(self) -> bool:
        """The loop works again; whether it had failed since it last did."""
        failed, self._last = self._last is not None, None
        return failed


@contextmanager
def job_context(job_id: object) -> Iterator[None]:
    """Tag every log line emitted in this block (this task and those it starts) with the job."""
    token = _job_id.set(str(job_id))
    try:
        yield
    finally:
        _job_id.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` of the current span and the current ``job_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        job_id = _job_id.get()
        if job_id is not None and not hasattr(record, "job_id"):
            record.job_id = job_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return _encoder.encode(out).decode()
        except UnicodeEncodeError:  # a lone surrogate (a provider's bytes, decoded leniently):
            # UTF-8 cannot hold it, and the line was lost to a multi-line "Logging error"
            return _encoder.encode({k: _encodable(v) for k, v in out.items()}).decode()


def _encodable(value: Any) -> Any:
    return value.encode("utf-8", "replace").decode() if isinstance(value, str) else value


# Control characters as escapes: a line may quote what a caller sent (a path with %0d%0a), and
# a raw CR/LF in it would start a forged line. JSON lines escape them already.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STD and not k.startswith("_")
        )
        base = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} "
        base += f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        base = base.translate(_CONTROLS)
        extra = extra.translate(_CONTROLS)
        if extra:
            base += f"  [{extra}]"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


class _NoAttemptWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error connecting in")


def id_list(ids: Iterable[object], limit: int = 20) -> str:
    """Ids for a log line that names the jobs it is about, at most ``limit`` of them."""
    shown = [str(i) for i in itertools.islice(ids, limit + 1)]
    return ", ".join(shown[:limit]) + (", …" if len(shown) > limit else "")


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log is off: the API logs each error answer itself (method, path,
    # status, code; never headers or values: service/api/errors.py), successes are not logged.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
    # httpx logs every request at INFO with its full URL, which may carry credentials
    # (userinfo, signed query strings of audio URLs).
    logging.getLogger("httpx").setLevel("WARNING")
    # psycopg_pool warns on every failed connection attempt (each pooled connection every
    # ~2 s while the server is down: ~180 lines from four processes in a 2-minute outage). The
    # callers already say it once per failed operation (a claim's retry, an API 503); its
    # other warnings (a reconnection given up after 5 minutes) stay.
    pool_log = logging.getLogger("psycopg.pool")
    pool_log.filters[:] = [f for f in pool_log.filters if not isinstance(f, _NoAttemptWarnings)]
    pool_log.addFilter(_NoAttemptWarnings())
