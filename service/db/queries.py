"""Named SQL queries from ``sql/queries.sql`` and ``sql/queries_*.sql``, parsed once per process.

Why a file of named queries (procrastinate's pattern): the SQL is reviewed, diffed and
EXPLAINed as SQL, and Python never builds statements out of strings with values in them.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)
_SPLICE = re.compile(r"\{\{\s*(_[A-Za-z0-9_]+)\s*\}\}")


def sql_dir() -> Path:
    """Where the ``sql/`` directory is: ``AI_SERVICE_SQL_DIR`` or beside the package."""
    override = os.environ.get("AI_SERVICE_SQL_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent.parent / "sql"


def missing_sql() -> str | None:
    """Why the ``sql/`` directory cannot serve, or None. Checked at start: a wrong
    ``AI_SERVICE_SQL_DIR`` found no migrations, so ``migrate`` (and ``--check``, an init
    container's gate) reported an empty database up to date, and the API failed later."""
    where = sql_dir()
    if (where / "queries.sql").is_file() and any(where.glob("0001_*.sql")):
        return None
    return (
        f"no SQL files in {where} (queries.sql and 0001_*.sql expected): AI_SERVICE_SQL_DIR "
        "must name the sql/ directory"
    )


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: sql}``, splicing ``{{ _fragment }}`` references: in
    parentheses, but for a ``_..._columns`` fragment (a select list) which goes in as it is."""
    parts = _HEADER.split(text)
    raw: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in raw:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        raw[name] = "\n".join(lines).strip().rstrip(";")

    def splice(m: re.Match[str]) -> str:
        frag = m.group(1)
        if frag not in raw:
            raise ValueError(f"unknown SQL fragment {frag!r}")
        body = raw[frag]
        # a query or condition goes in parentheses; a column list as it is
        return body if frag.endswith("_columns") else "(" + body + ")"

    return {n: _SPLICE.sub(splice, q) for n, q in raw.items() if not n.startswith("_")}


@cache
def queries() -> dict[str, bytes]:
    """The named queries of ``queries.sql`` and ``queries_*.sql`` (one file per concern),
    encoded once: psycopg takes bytes as a trusted, literal query."""
    files = [sql_dir() / "queries.sql", *sorted(sql_dir().glob("queries_*.sql"))]
    text = "\n".join(f.read_text(encoding="utf-8") for f in files)
    return {name: sql.encode() for name, sql in parse_queries(text).items()}
