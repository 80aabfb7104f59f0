"""The job state machine of DESIGN.md, as data: used by the repository's checks, the API's
conflict messages and the docs (``mermaid()`` renders the diagram committed in docs/).

Why data and not only SQL ``WHERE status = ...`` guards: the guards live in sql/queries.sql,
and a test checks each named transition query against this table, so the two cannot drift.
"""

from __future__ import annotations

from typing import Final

from service.jobs.model import Status

TERMINAL: Final[frozenset[Status]] = frozenset({"completed", "failed", "cancelled"})

# (from, to, event) — every transition the service performs.
TRANSITIONS: Final[tuple[tuple[Status, Status, str], ...]] = (
    ("pending", "running", "claim"),
    ("running", "completed", "complete"),
    ("running", "pending", "fail (retryable, attempts left) / lease expired / release"),
    ("running", "failed", "fail (final or no attempts left) / lease expired, no attempts left"),
    ("running", "running", "heartbeat"),
    ("failed", "pending", "retry"),
    ("running", "pending", "retry"),
    ("pending", "cancelled", "cancel"),
    ("running", "cancelled", "cancel"),
)

# Which statuses each caller-facing action accepts.
ACCEPTS: Final[dict[str, frozenset[Status]]] = {
    "complete": frozenset({"running"}),
    "fail": frozenset({"running"}),
    "heartbeat": frozenset({"running"}),
    "retry": frozenset({"failed", "running"}),
    "cancel": frozenset({"pending", "running"}),
}


def allowed(action: str, status: Status) -> bool:
    return status in ACCEPTS[action]


def mermaid() -> str:
    """The state diagram in mermaid syntax, for docs/state-machine.md."""
    lines = ["stateDiagram-v2", "    [*] --> pending: submit"]
    seen: set[tuple[str, str]] = set()
    for src, dst, _event in TRANSITIONS:
        if (src, dst) in seen:
            continue
        seen.add((src, dst))
        events = " / ".join(e for s, d, e in TRANSITIONS if (s, d) == (src, dst))
        lines.append(f"    {src} --> {dst}: {events}")
    lines += [f"    {s} --> [*]" for s in sorted(TERMINAL)]
    return "\n".join(lines) + "\n"
