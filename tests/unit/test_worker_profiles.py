"""Which profiles a worker serves: the flags, else WORKER_PROFILES, else every profile with a
handler. A profile named that no handler here serves is refused at start-up: the worker would
claim each of its jobs and fail it as ``unsupported_task`` (a typo, or a profile whose jobs a
domain service's own workers take through the API, would have its queue emptied)."""

from __future__ import annotations

import socket
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


def test_a_worker_with_no_profile_says_so_before_it_binds_its_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing to serve is the error, even where the port is taken (a second worker on the
    host): the port is bound only once the profiles are settled. No database is reached."""
    from service.worker.main import run_worker_process

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        settings = Settings(worker_http_host="127.0.0.1", worker_http_port=taken.getsockname()[1])
        code = run_worker_process(settings, "postgresql://unused.invalid/x", [], HandlerRegistry())
    err = capsys.readouterr().err
    assert code == 2, err
    assert "the worker has no profiles to serve" in err, err
    assert "already in use" not in err, err
