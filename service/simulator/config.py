"""Knobs of the simulated inference server, one named default each."""

from __future__ import annotations

from dataclasses import dataclass

_MiB = 1024 * 1024
FAILURE_KINDS = ("429", "503", "timeout")


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated GPU server behaves. Latencies in milliseconds."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Requests running at once per served model (vLLM's batch); the rest wait in a queue.
    capacity: int = 8
    # Fixed part of every request's latency (prefill, scheduling); also the time to first token.
    latency_ms: float = 50.0
    # Added per generated token of a chat completion.
    per_token_ms: float = 2.0
    # Added per second of audio in a transcription.
    per_audio_second_ms: float = 10.0
    # Tokens a chat answer has when max_tokens does not cut it short.
    completion_tokens: int = 32
    # Share of inference requests that fail on purpose (0..1), drawn from a seeded RNG.
    fail_rate: float = 0.0
    # Which failures are injected, picked uniformly: "429", "503", "timeout".
    fail_kinds: tuple[str, ...] = ("503",)
    # Seed of the failure RNG: the same seed gives the same pass/fail sequence.
    seed: int = 0
    # Retry-After (seconds) sent with injected 429/503.
    retry_after_s: int = 1
    # How long an injected "timeout" hangs before answering 504 (or until the client leaves).
    hang_s: float = 600.0
    chat_models: tuple[str, ...] = ("qwen2.5-14b",)
    audio_models: tuple[str, ...] = ("mistralai/Voxtral-Small-24B-2507",)
    # vLLM's context window check: prompt + max_tokens above this is a 400.
    max_model_len: int = 32768
    # vLLM's VLLM_MAX_AUDIO_CLIP_FILESIZE_MB (25): larger uploads get 400 "Maximum file size".
    max_upload_bytes: int = 25 * _MiB
    # KV cache size in tokens per model, for vllm:kv_cache_usage_perc.
    kv_cache_tokens: int = 65536
    # Like `vllm serve --api-key`: /v1/* then needs "Authorization: Bearer <key>" (else 401).
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        bad = [k for k in self.fail_kinds if k not in FAILURE_KINDS]
        if bad or not self.fail_kinds:
            raise ValueError(f"fail_kinds must be a non-empty subset of {FAILURE_KINDS}")
        if min(self.latency_ms, self.per_token_ms, self.per_audio_second_ms) < 0:
            raise ValueError("latencies must not be negative")
