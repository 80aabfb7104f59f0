"""The state machine doc and the named-query file stay consistent with the code."""

from __future__ import annotations

import pytest

from service.db.queries import parse_queries, queries
from service.jobs.states import mermaid
from tests.helpers import ROOT


def test_state_machine_doc_is_generated_from_the_code() -> None:
    doc = (ROOT / "docs" / "state-machine.md").read_text()
    assert mermaid() in doc


def test_named_queries_parse_and_splice_fragments() -> None:
    parsed = parse_queries(
        "-- name: _frag\na = 1\n-- name: q\n-- comment\nSELECT 1 WHERE {{ _frag }};\n"
    )
    assert parsed == {"q": "SELECT 1 WHERE (a = 1)"}
    with pytest.raises(ValueError, match="unknown SQL fragment"):
        parse_queries("-- name: q\nSELECT {{ _nope }}")
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: q\nSELECT 1\n-- name: q\nSELECT 2")


def test_project_queries_load_without_placeholders_left() -> None:
    loaded = queries()
    assert {"claim_jobs", "create_jobs", "reap_expired", "list_jobs"} <= set(loaded)
    assert not [n for n, q in loaded.items() if b"{{" in q]
