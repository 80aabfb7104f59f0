"""Pure helpers of the API: error field paths, bearer parsing, constant-time matching."""

from __future__ import annotations

from service.api.auth import token_from_header, token_matches
from service.api.errors import _msgspec_field
from service.api.schemas import FilterBody


def test_msgspec_messages_become_field_paths() -> None:
    f = _msgspec_field("Expected `int`, got `str` - at `$.jobs[3].priority`")
    assert (f.field, f.message) == ("jobs[3].priority", "expected `int`, got `str`")
    f = _msgspec_field("Object contains unknown field `nope` - at `$.defaults`")
    assert (f.field, f.message) == ("defaults.nope", "unknown field")
    f = _msgspec_field("Object missing required field `worker_id`")
    assert (f.field, f.message) == ("worker_id", "required field is missing")
    assert _msgspec_field("Expected `object`, got `array`").field == "body"


def test_bearer_header_parsing() -> None:
    assert token_from_header("Bearer abc") == b"abc"
    assert token_from_header("bearer   abc  ") == b"abc"
    for bad in (None, "", "Bearer", "Bearer ", "Basic abc", "abc"):
        assert token_from_header(bad) is None


def test_token_matching_checks_every_token() -> None:
    accepted = (b"old", b"new")
    assert token_matches(b"old", accepted) and token_matches(b"new", accepted)
    assert not token_matches(b"ol", accepted) and not token_matches(b"", accepted)
    assert not token_matches(b"x", ())


def test_filter_body_maps_to_job_filter() -> None:
    body = FilterBody(owner_service="t", status=["failed"], all=True)
    flt = body.to_filter()
    assert flt.owner_service == "t" and flt.status == ["failed"] and not flt.is_empty()
    assert FilterBody(all=True).to_filter().is_empty()


def test_a_nul_is_found_where_it_is_and_a_huge_document_is_named_whole() -> None:
    from service.api.naming import NUL_SEARCH_VALUES, _nul_path

    for document, path in [
        ({"a": 1, "b": {"c": ["x", "y\x00"]}}, "b.c[1]"),
        ({"jobs": [{"input": {}}, {"input": {"u\x00k": 1}}]}, "jobs[1].input.u\\u0000k"),
        ({"a": [[], [1, {"b": "\x00"}]]}, "a[1][1].b"),
        ({"a\x00": {"b": "\x00"}}, "a\\u0000"),  # the key first, as written
        ([["\x00"]], "[0][0]"),
        ("\x00", "body"),
        ({"a": ["ok", {"b": None}]}, None),
    ]:
        assert _nul_path(document) == path, document
    # two million small arrays (10 MB of JSON) held the event loop for seconds
    huge = {"input": {"x": [[1]] * NUL_SEARCH_VALUES + ["\x00"]}}
    assert _nul_path(huge) == "body"
