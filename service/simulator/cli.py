"""``ai-service simulate-provider``: argparse wiring for the simulated inference server.

Hook it in with ``add_arguments(subparsers.add_parser("simulate-provider"))`` and call
``main(args)``.
"""

from __future__ import annotations

import argparse
import sys

from service.simulator.config import FAILURE_KINDS, SimulatorConfig
from service.simulator.server import run_simulator

_D = SimulatorConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a simulated OpenAI-compatible inference endpoint (vLLM look-alike, synthetic "
        "answers, x-simulated: true) for local runs, tests and benchmarks."
    )
    a = parser.add_argument
    a("--host", default=_D.host, help=f"listen address (default {_D.host})")
    a("--port", type=int, default=_D.port, help=f"port (default {_D.port})")
    a(
        "--capacity",
        type=int,
        default=_D.capacity,
        help=f"requests running at once per model; the rest queue (default {_D.capacity})",
    )
    a(
        "--latency-ms",
        type=float,
        default=_D.latency_ms,
        help=f"fixed latency per request (default {_D.latency_ms:g})",
    )
    a(
        "--per-token-ms",
        type=float,
        default=_D.per_token_ms,
        help=f"added per generated token (default {_D.per_token_ms:g})",
    )
    a(
        "--per-audio-second-ms",
        type=float,
        default=_D.per_audio_second_ms,
        help=f"added per second of audio (default {_D.per_audio_second_ms:g})",
    )
    a(
        "--completion-tokens",
        type=int,
        default=_D.completion_tokens,
        help=f"tokens per chat answer unless max_tokens is lower (default {_D.completion_tokens})",
    )
    a(
        "--fail-rate",
        type=float,
        default=_D.fail_rate,
        help="share of inference requests that fail on purpose, 0..1 (default 0)",
    )
    a(
        "--fail-kinds",
        default=",".join(_D.fail_kinds),
        help=f"comma-separated failures to inject, of {', '.join(FAILURE_KINDS)} (default 503)",
    )
    a("--seed", type=int, default=_D.seed, help="seed of the failure sequence (default 0)")
    a(
        "--chat-model",
        action="append",
        dest="chat_models",
        metavar="NAME",
        help=f"chat model to serve; repeatable (default {_D.chat_models[0]})",
    )
    a("--audio-model", action="append", dest="audio_models", metavar="NAME",
      help=f"transcription model to serve; repeatable (default {_D.audio_models[0]})")  # fmt: skip
    a("--api-key", default=None, metavar="KEY",
      help="answer 401 unless requests carry this bearer key, as vLLM's --api-key (default: "
           "none needed; for trying a worker's key handling, not a secret)")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    kinds = tuple(k.strip() for k in str(args.fail_kinds).split(",") if k.strip())
    try:
        return run_simulator(
            host=args.host,
            port=args.port,
            capacity=args.capacity,
            latency_ms=args.latency_ms,
            per_token_ms=args.per_token_ms,
            per_audio_second_ms=args.per_audio_second_ms,
            completion_tokens=args.completion_tokens,
            fail_rate=args.fail_rate,
            fail_kinds=kinds,
            seed=args.seed,
            chat_models=tuple(args.chat_models or _D.chat_models),
            audio_models=tuple(args.audio_models or _D.audio_models),
            api_key=args.api_key,
        )
    except ValueError as exc:  # (ConfigError too: a port taken): exit 2, as every command's
        print(f"simulate-provider: {exc}", file=sys.stderr)  # bad setting
        return 2
