"""Connection parameters that bound every wait on the database's network.

Without them a worker whose database host vanished (a node dying during a failover, a
firewall dropping packets) waits on the kernel: ~15 minutes of retransmissions for a query in
flight, ~2 hours of TCP keepalive for an idle LISTEN connection. Meanwhile its leases lapse
and other workers rerun its jobs, and a SIGTERM cannot finish a shielded claim. So every
connection we open asks libpq to give up within tens of seconds, and pooled connections ask
the server to cut a statement (or an idle transaction holding locks) after
``DB_STATEMENT_TIMEOUT``.

Parameters already in ``DATABASE_URL`` win: an operator who set ``connect_timeout`` or
``options`` there means it. Keepalives and ``tcp_user_timeout`` are ignored on Unix sockets.
"""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import conninfo_to_dict

NETWORK_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,  # seconds to establish a connection
    "keepalives": 1,
    "keepalives_idle": 10,  # an idle peer is probed after 10 s ...
    "keepalives_interval": 5,  # ... every 5 s ...
    "keepalives_count": 3,  # ... and declared dead after 3 unanswered probes (~25 s)
    "tcp_user_timeout": 30_000,  # ms that sent data may stay unacknowledged
}


def connect_params(url: str, *, statement_timeout: float | None = None) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect(url, **kwargs)`` that the URL does not set.

    ``statement_timeout`` (seconds; 0 or None: none) also becomes the session's
    ``idle_in_transaction_session_timeout``: a process stalled inside a transaction must not
    hold its row and advisory locks for longer than a statement may run.
    """
    given = conninfo_to_dict(url)
    params = {k: v for k, v in NETWORK_DEFAULTS.items() if k not in given}
    if statement_timeout:
        ms = max(1, round(statement_timeout * 1000))
        ours = f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}"
        theirs = given.get("options")
        # PostgreSQL applies -c settings in order, so the URL's own come last and win.
        params["options"] = f"{ours} {theirs}" if theirs else ours
    return params
