"""Which profiles a worker serves: the flags, else WORKER_PROFILES, else every profile with a
handler. A profile named that no handler here serves is refused at start-up: the worker would
claim each of its jobs and fail it as ``unsupported_task`` (a typo, or a profile whose jobs a
domain service's own workers take through the API, would have its queue emptied)."""

from __future__ import annotations

from typing import Any

import pytest

from service.config import ConfigError, Settings
from service.handlers.base import HandlerRegistry
from service.worker.registry import resolve_profiles


async def handler(job: Any) -> dict[str, Any]:
    return {}


def registry() -> HandlerRegistry:
    reg = HandlerRegistry()
    reg.register(["llm_chat"], "qwen2.5-14b", handler)
    reg.register(["transcribe"], "voxtral-small", handler)
    return reg


def test_flags_then_setting_then_every_served_profile() -> None:
    reg, settings = registry(), Settings(worker_profiles=("voxtral-small",))
    assert resolve_profiles(["qwen2.5-14b", "qwen2.5-14b"], settings, reg) == ["qwen2.5-14b"]
    assert resolve_profiles([], settings, reg) == ["voxtral-small"]
    assert resolve_profiles([], Settings(), reg) == ["qwen2.5-14b", "voxtral-small"]


@pytest.mark.parametrize("flags", [["qwen2.5-14b", "qwen-typo"], []])
def test_a_profile_no_handler_serves_is_refused(flags: list[str]) -> None:
    settings = Settings(worker_profiles=("qwen-typo",))
    with pytest.raises(ConfigError, match=r"serves the model profile\(s\) qwen-typo \(") as err:
        resolve_profiles(flags, settings, registry())
    assert "handlers serve: qwen2.5-14b, voxtral-small" in str(err.value)
