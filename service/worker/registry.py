"""Which handlers a worker process runs: the built-in ones, plus any named by
``AI_SERVICE_EXTRA_HANDLERS``, and which profiles it therefore serves by default.

``AI_SERVICE_EXTRA_HANDLERS=module:function[,module:function...]`` is an extension and test
hook: each ``function(registry)`` is imported and called to register more handlers (the
process tests use it to run a recording test handler inside real ``ai-service worker``
processes). It is not a configuration setting of the product.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Iterable
from typing import Any

from service.config import ConfigError, Settings
from service.handlers.base import HandlerRegistry

log = logging.getLogger("ai_service.worker.registry")

EXTRA_HANDLERS_ENV = "AI_SERVICE_EXTRA_HANDLERS"


def load_extra_handlers(registry: HandlerRegistry, spec: str) -> None:
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        module_name, sep, func_name = item.partition(":")
        if not sep or not module_name or not func_name:
            raise ConfigError(f"{EXTRA_HANDLERS_ENV}={spec!r} is invalid: expected module:function")
        try:
            register = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{EXTRA_HANDLERS_ENV}: cannot load {item!r}: {exc}") from exc
        try:
            register(registry)
        except Exception as exc:  # the operator's one line, not a traceback from their code
            raise ConfigError(f"{EXTRA_HANDLERS_ENV}: {item!r} failed: {exc!r}") from exc


def check_extra_handlers() -> None:
    """Load ``AI_SERVICE_EXTRA_HANDLERS`` into a scratch registry: a ``ConfigError`` now rather
    than after a database was started for a worker that cannot be built. (Each ``register``
    function then runs twice in ``ai-service dev``: it should only register handlers.)"""
    load_extra_handlers(HandlerRegistry(), os.environ.get(EXTRA_HANDLERS_ENV, ""))


def _builtin(settings: Settings) -> tuple[HandlerRegistry, list[Any]]:
    try:
        from service.handlers.builtin import builtin_registry
    except ModuleNotFoundError as exc:  # a trimmed build without the providers
        if exc.name is None or not exc.name.startswith("service."):
            raise
        log.warning("built-in handlers are not available; only extra handlers will run")
        return HandlerRegistry(), []
    registry, clients = builtin_registry(settings)
    return registry, list(clients)


def build_registry(settings: Settings) -> tuple[HandlerRegistry, list[Any]]:
    """The built-in registry (handlers of the configured providers; their HTTP pools are
    sized by the profiles' claim limits) plus extra handlers, and the clients to close."""
    registry, clients = _builtin(settings)
    load_extra_handlers(registry, os.environ.get(EXTRA_HANDLERS_ENV, ""))
    return registry, clients


def resolve_profiles(
    profiles: Iterable[str], settings: Settings, registry: HandlerRegistry
) -> list[str]:
    """``--profile`` flags, else ``WORKER_PROFILES``, else every profile with a handler.

    A profile named but served by no handler here is refused (``ConfigError``): the worker
    would claim every job of it and fail each as ``unsupported_task`` — a typo, or a profile
    whose jobs a domain service's own workers take, would have its queue emptied."""
    chosen = list(dict.fromkeys(list(profiles) or list(settings.worker_profiles)))
    served = registry.profiles()
    if unknown := [p for p in chosen if p not in served]:
        raise ConfigError(
            f"no handler here serves the model profile(s) {', '.join(unknown)} "
            f"(--profile / WORKER_PROFILES); this worker's handlers serve: "
            f"{', '.join(served) or 'none'} (LLM_BASE_URL and LLM_MODEL, VOXTRAL_BASE_URL, "
            "AI_SERVICE_EXTRA_HANDLERS)"
        )
    return chosen or served


async def close_all(clients: Iterable[Any]) -> None:
    for client in clients:
        close = getattr(client, "aclose", None) or getattr(client, "close", None)
        if close is None:
            continue
        try:
            result = close()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("closing %r failed", client)
