"""The README is part of the contract: it starts with the two commands and documents every
setting the service reads, so a new variable cannot ship undocumented."""

from __future__ import annotations

from service.config import FIELDS
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    assert [line for line in first_block.splitlines() if line.strip()] == ["make run", "make test"]


def test_every_setting_is_documented() -> None:
    missing = [f.env for f in FIELDS if f"`{f.env}" not in README]
    assert not missing, f"settings missing from README.md: {missing}"
