"""``ai-service dev`` where the embedded PostgreSQL is not installed (the production image,
or a ``pip install ai-service`` without the ``embedded`` extra): one clear line naming the
two ways out, exit code 2, and nothing started."""

from __future__ import annotations

import sys

import pytest

from service.config import Settings
from service.dev import NO_EMBEDDED, run_dev


def test_dev_without_the_embedded_extra_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "service.db.embedded", None)  # import fails, as uninstalled
    with caplog.at_level("ERROR", logger="ai_service.dev"):
        assert run_dev(Settings()) == NO_EMBEDDED == 2
    assert "pip install 'ai-service[embedded]'" in caplog.text and "DATABASE_URL" in caplog.text
