"""``GET /api/v1/providers/status`` and ``GET /api/v1/infra/status``.

Both answer 200 whatever state the providers or the sidecar are in: the body says what is
wrong (``reachable: false`` and ``error``). A status endpoint that fails when the thing it
reports on is down would hide the very answer the caller came for; 5xx stays reserved for the
API itself. The probing lives in ``service.providers.status``; this module shapes the answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.di import NamedDependency

from service.api.errors import responses
from service.config import Settings
from service.providers.status import ProviderStatusBoard, fetch_infra_status


class ProviderStatus(msgspec.Struct, omit_defaults=True):
    """One provider. Only ``name``, ``configured`` and ``model`` when it is not configured."""

    name: str
    configured: bool
    model: str
    base_url: str | None = None
    reachable: bool | None = None
    latency_ms: float | None = None
    models: list[str] | None = None
    model_served: bool | None = None
    # the server says it is the simulator (``x-simulated: true``): its answers are synthetic
    simulated: bool | None = None
    error: str | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None


class ProvidersStatus(msgspec.Struct):
    checked_at: datetime
    providers: list[ProviderStatus]


class InfraStatus(msgspec.Struct, omit_defaults=True):
    """The sidecar's report (``gpus``, ``containers``, ``vllm``, ``collected_ms``) plus how it
    was fetched. Only ``configured: false`` when ``INFRA_STATUS_URL`` is unset."""

    configured: bool
    url: str | None = None
    reachable: bool | None = None
    latency_ms: float | None = None
    error: str | None = None
    gpus: dict[str, Any] | None = None
    containers: dict[str, Any] | None = None
    vllm: list[dict[str, Any]] | None = None
    collected_ms: float | None = None


def provider_board(state: State) -> ProviderStatusBoard:
    board: ProviderStatusBoard | None = getattr(state, "provider_board", None)
    if board is None:  # the app's lifespan normally creates it; this covers bare test apps
        board = state.provider_board = ProviderStatusBoard.from_settings(state.settings)
    return board


@get(
    "/providers/status",
    summary="Inference provider status",
    description="For each provider (LLM: LLM_BASE_URL/LLM_MODEL; Voxtral: VOXTRAL_BASE_URL/"
    "VOXTRAL_MODEL): whether it is configured, its base URL without credentials, whether it "
    "answered `GET /v1/models`, the latency, the models it serves, whether the configured "
    "model is among them, the current error and the last error seen. Probes run concurrently "
    "with a 3 s timeout and are cached for 5 s (concurrent callers share one probe). Always "
    "200: an unreachable provider is reported in the body. No key is ever returned.",
    responses=responses(),
    tags=["status"],
)
async def providers_status(state: State) -> ProvidersStatus:
    snap = await provider_board(state).snapshot()
    return ProvidersStatus(
        checked_at=snap["checked_at"],
        providers=[msgspec.convert(p, ProviderStatus) for p in snap["providers"]],
    )


@get(
    "/infra/status",
    summary="AI server telemetry (infra sidecar)",
    description="Relays the JSON of the AI server's `ai-service infra-sidecar` "
    "(INFRA_STATUS_URL): GPUs via NVML, inference containers via the Docker socket, and each "
    "vLLM's live metrics (running/waiting requests, KV-cache usage, time-to-first-token and "
    'end-to-end latency). `{"configured": false}` when INFRA_STATUS_URL is unset. An '
    "unreachable or failing sidecar is still a 200, with `reachable: false` (or an `error`) "
    "saying why; GPUs or Docker missing on the host show as `available: false` inside.",
    responses=responses(),
    tags=["status"],
)
async def infra_status(settings: NamedDependency[Settings]) -> InfraStatus:
    data = await fetch_infra_status(settings.infra_status_url)
    try:
        return msgspec.convert(data, InfraStatus, strict=False)
    except msgspec.ValidationError as exc:
        return InfraStatus(
            configured=True,
            url=data.get("url"),
            reachable=True,
            latency_ms=data.get("latency_ms"),
            error=f"the infra sidecar answered an unexpected shape: {exc}",
        )


ROUTES = [providers_status, infra_status]
