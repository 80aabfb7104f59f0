"""Connection parameters and session settings that bound every wait on the database.

Without them a worker whose database host vanished (a node dying during a failover, a
firewall dropping packets) waits on the kernel: ~15 minutes of retransmissions for a query in
flight, ~2 hours of TCP keepalive for an idle LISTEN connection. Meanwhile its leases lapse
and other workers rerun its jobs, and a SIGTERM cannot finish a shielded claim. So every
connection we open asks libpq to give up within tens of seconds, and pooled sessions ask the
server to cut a statement (or an idle transaction holding locks) after
``DB_STATEMENT_TIMEOUT``.

The session timeouts are ``SET`` once per new pooled connection rather than sent in the
startup packet's ``options``: PgBouncer (even in session mode) refuses unknown startup
options, and passing ``options`` would make libpq ignore the operator's ``PGOPTIONS``. What
``DATABASE_URL`` or ``PGOPTIONS`` already sets wins, as do libpq parameters in the URL.
Keepalives and ``tcp_user_timeout`` are ignored on Unix sockets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from psycopg import Error
from psycopg.conninfo import conninfo_to_dict

NETWORK_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,  # seconds to establish a connection
    "keepalives": 1,
    "keepalives_idle": 10,  # an idle peer is probed after 10 s ...
    "keepalives_interval": 5,  # ... every 5 s ...
    "keepalives_count": 3,  # ... and declared dead after 3 unanswered probes (~25 s)
    "tcp_user_timeout": 30_000,  # ms that sent data may stay unacknowledged
}
SESSION_TIMEOUTS = ("statement_timeout", "idle_in_transaction_session_timeout")
_SETS_JIT = re.compile(r"jit\s*=")  # -c jit=on, -cjit=on (not jit_above_cost=)
_SETS_TIMEZONE = re.compile(r"timezone\s*=", re.IGNORECASE)  # -c TimeZone=..., -ctimezone=


def connect_params(url: str) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect(url, **kwargs)`` that the URL does not set."""
    given = conninfo_to_dict(url)
    return {k: v for k, v in NETWORK_DEFAULTS.items() if k not in given}


def session_settings(
    url: str, statement_timeout: float | None, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Settings to ``SET`` on a new pooled session, except those the URL's ``options`` or
    ``PGOPTIONS`` set: ``statement_timeout`` (seconds; 0 or None: none) as both timeouts — a
    process stalled inside a transaction must not hold its row and advisory locks longer than
    a statement may run — ``jit = off``, and ``TimeZone = UTC``.

    Why UTC: every time the API answers is read from these sessions, and PostgreSQL renders a
    ``timestamptz`` in the session's zone. On a server whose ``TimeZone`` is local (Debian's
    packages take the host's) a job's ``run_after`` came back as ``…T10:46:40-07:00`` — the
    right instant, in a zone that depended on the database. No statement depends on the zone.

    Why no JIT: the service's statements are short, and a server built with LLVM (the
    CloudNativePG images, Debian's packages) compiles any plan whose estimated cost passes
    ``jit_above_cost``. A prepared claim's generic plan can pass it with the limit unknown:
    measured on PostgreSQL 15, 13.7 ms of compilation on every execution of a 0.7 ms claim."""
    env = os.environ if env is None else env
    theirs = f"{conninfo_to_dict(url).get('options') or ''} {env.get('PGOPTIONS', '')}"
    out = {} if _SETS_JIT.search(theirs) else {"jit": "off"}
    if not _SETS_TIMEZONE.search(theirs):
        out["TimeZone"] = "UTC"
    if statement_timeout:
        ms = str(max(1, round(statement_timeout * 1000)))
        out.update({name: ms for name in SESSION_TIMEOUTS if name not in theirs})
    return out


def parses(url: str) -> bool:
    """Whether libpq can parse ``url`` as meant; its own message for one it cannot quotes the
    password (or the whole URL), so the settings refuse it without showing it
    (service/config.py). An ``@`` left unencoded in a password parses too, at the first
    ``@``: the rest of the password becomes the host (or the database name, after a ``/``),
    which every connection error then prints — no host or database name of ours has one."""
    try:
        params = conninfo_to_dict(url)
    except Error:
        return False
    return not any("@" in str(params.get(k) or "") for k in ("host", "dbname"))
