"""A deterministic text dump of the public schema from the catalogs (no pg_dump needed, so
it works the same against the embedded server and any TEST_DATABASE_URL)."""

from __future__ import annotations

import psycopg

_SECTIONS: dict[str, bytes] = {
    "columns": b"""
        SELECT table_name || '.' || column_name || ' ' || data_type
               || CASE WHEN is_nullable = 'NO' THEN ' NOT NULL' ELSE '' END
               || coalesce(' DEFAULT ' || column_default, '')
        FROM information_schema.columns WHERE table_schema = 'public'
        ORDER BY table_name, ordinal_position""",
    "constraints": b"""
        SELECT c.conrelid::regclass::text || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.contype <> 'n' ORDER BY 1""",
    "indexes": b"""
        SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname""",
    "triggers": b"""
        SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal ORDER BY t.tgname""",
    "storage parameters": b"""
        SELECT c.relname || ' ' || array_to_string(c.reloptions, ', ') FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.reloptions IS NOT NULL ORDER BY c.relname""",
    "functions": b"""
        SELECT pg_get_functiondef(p.oid) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' ORDER BY p.proname""",
}


def dump_schema(url: str) -> str:
    out: list[str] = []
    with psycopg.connect(url) as conn:
        # Times in constraints are rendered in the session's TimeZone: the same on any server.
        conn.execute("SET TimeZone = 'UTC'")
        for title, query in _SECTIONS.items():
            out.append(f"-- {title}")
            out.extend(str(r[0]).rstrip() for r in conn.execute(query).fetchall())
    return "\n".join(out) + "\n"
