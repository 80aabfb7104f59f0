"""Offline checks of the Kubernetes manifests in deploy/k8s (rendered by the test renderer in
test_deploy_kustomize.py, which is cross-checked against real kustomize where it exists).

Built-in kinds are validated with kubernetes-validate against the schemas of a pinned
Kubernetes version, in strict mode (unknown fields are errors). Custom resources (KEDA,
CloudNativePG) have no schema offline: the fields we rely on are checked explicitly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from service.config import FIELD_BY_ENV, FIELDS, parse_duration
from service.handlers.transcription_input import TRANSCRIPTION_PROFILE
from service.worker.shutdown import FINAL_WRITES_TIMEOUT
from tests.unit.test_deploy_kustomize import K8S, KUSTOMIZATIONS, load_yaml_docs, render

K8S_VERSION = "1.32.0"
ROOT = Path(__file__).resolve().parents[2]

# Standard OpenTelemetry variables, read by the OTel SDK through service/telemetry.py.
OTEL_VARS = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_SDK_DISABLED",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_CAPTURE_CONTENT",
}
# Read outside service/config.py; each must really occur in the source (checked below).
OUTSIDE_CONFIG = {"AI_SERVICE_SQL_DIR": "service/db/queries.py"}
KNOWN_ENV = {f.env for f in FIELDS} | OTEL_VARS | set(OUTSIDE_CONFIG)

# Channels: the transcription profile the built-in handler serves, and the LLM one, which is
# whatever LLM_MODEL says.
CRD_KINDS = {("keda.sh", "ScaledObject"), ("keda.sh", "TriggerAuthentication")}
CRD_KINDS |= {("postgresql.cnpg.io", "Cluster")}

Obj = dict[str, Any]


def group_of(obj: Obj) -> str:
    return str(obj["apiVersion"]).rpartition("/")[0]


def is_crd(obj: Obj) -> bool:
    return (group_of(obj), obj["kind"]) in CRD_KINDS


def pod_spec(obj: Obj) -> Obj | None:
    if obj["kind"] in ("Deployment", "Job"):
        spec: Obj = obj["spec"]["template"]["spec"]
        return spec
    return None


def containers(obj: Obj) -> list[Obj]:
    spec = pod_spec(obj) or {}
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def ours(container: Obj) -> bool:
    return "ai-service" in container["image"].rsplit("/", 1)[-1]


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def configmap_data(objs: list[Obj], name: str) -> dict[str, str]:
    data: dict[str, str] = find(objs, "ConfigMap", name).get("data", {})
    return data


def effective_env(objs: list[Obj], container: Obj) -> dict[str, Any]:
    """Name → value (or valueFrom) as the kubelet builds it: envFrom first, then env."""
    env: dict[str, Any] = {}
    for src in container.get("envFrom", []):
        env.update(configmap_data(objs, src["configMapRef"]["name"]))
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def setting(objs: list[Obj], container: Obj, name: str) -> str:
    value = effective_env(objs, container).get(name, FIELD_BY_ENV[name].default)
    assert isinstance(value, str), f"{name} must be a literal here"
    return value


def channels(objs: list[Obj]) -> set[str]:
    llm = configmap_data(objs, "ai-service-config").get("LLM_MODEL")
    return {llm or str(FIELD_BY_ENV["LLM_MODEL"].default), TRANSCRIPTION_PROFILE}


def deployment_name(profile: str) -> str:
    return "worker-" + re.sub(r"[^a-z0-9]+", "-", profile.lower()).strip("-")


def expected_query(profile: str) -> str:
    """What tests/integration/test_keda_query.py runs against a real database."""
    return (
        f"SELECT count(*) FROM ai_jobs WHERE model_profile='{profile}' "
        "AND (status='running' OR (status='pending' AND run_after <= now()))"
    )


RENDERS = {p.name: render(p) for p in KUSTOMIZATIONS}
render_ids = list(RENDERS)


@pytest.fixture(params=render_ids)
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return RENDERS[request.param]


# --- schema validation ---------------------------------------------------------------------


def test_pinned_kubernetes_schema_is_shipped() -> None:
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, K8S_VERSION, True
    )


@pytest.mark.parametrize("name", render_ids)
def test_every_builtin_manifest_validates_strictly(name: str) -> None:
    objs = RENDERS[name] + load_yaml_docs(K8S / "secret.example.yaml")
    builtin = [o for o in objs if not is_crd(o)]
    assert len(builtin) >= 10
    for obj in builtin:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_really_rejects_unknown_fields() -> None:
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "bogus": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_only_known_custom_resources(objs: list[Obj]) -> None:
    for obj in objs:
        if "." in group_of(obj) and not group_of(obj).endswith(".k8s.io"):
            assert is_crd(obj), f"unchecked custom resource {obj['kind']}"


# --- settings -------------------------------------------------------------------------------


def test_names_read_outside_config_are_really_read() -> None:
    for name, path in OUTSIDE_CONFIG.items():
        assert name in (ROOT / path).read_text(), f"{name} is no longer read by {path}"


def test_every_env_var_is_a_known_setting(objs: list[Obj]) -> None:
    seen: set[str] = set()
    for obj in objs:
        for c in filter(ours, containers(obj)):
            seen |= set(effective_env(objs, c))
    assert seen, "no ai-service container found"
    assert seen <= KNOWN_ENV, f"unknown settings: {sorted(seen - KNOWN_ENV)}"
    # The ConfigMap is all settings too, even keys no container happens to read.
    assert set(configmap_data(objs, "ai-service-config")) <= KNOWN_ENV


def test_configmap_values_parse_as_settings(objs: list[Obj]) -> None:
    for name, value in configmap_data(objs, "ai-service-config").items():
        if name in FIELD_BY_ENV and value != "":
            FIELD_BY_ENV[name].parse(value)


def test_secrets_never_in_the_configmap(objs: list[Obj]) -> None:
    secret_names = {f.env for f in FIELDS if f.secret}
    assert not secret_names & set(configmap_data(objs, "ai-service-config"))
    seen = []
    for obj in objs:
        for c in containers(obj):
            for e in c.get("env", []):
                if e["name"] in secret_names:
                    assert "secretKeyRef" in e.get("valueFrom", {}), e["name"]
                    seen.append(e["name"])
    assert {"DATABASE_URL", "AI_SERVICE_TOKEN"} <= set(seen), seen  # the loop saw secrets


def test_secret_template_covers_every_secret_the_pods_read() -> None:
    template = load_yaml_docs(K8S / "secret.example.yaml")[0]
    keys = set(template["stringData"])
    for obj in RENDERS["base"]:
        for c in containers(obj):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == template["metadata"]["name"]:
                    assert ref["key"] in keys, ref
    assert keys <= {f.env for f in FIELDS if f.secret}


# --- workloads ------------------------------------------------------------------------------


def test_images_are_pinned(objs: list[Obj]) -> None:
    for obj in objs:
        for c in containers(obj):
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert (tag and tag != "latest") or "@sha256:" in image, image
    for cluster in (o for o in objs if o["kind"] == "Cluster"):
        assert not cluster["spec"]["imageName"].endswith(":latest")


def test_every_container_is_unprivileged_with_requests(objs: list[Obj]) -> None:
    for obj in (o for o in objs if pod_spec(o) is not None):
        spec = pod_spec(obj)
        assert spec is not None
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for c in containers(obj):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]


def test_migrations_run_as_a_job_not_at_start(objs: list[Obj]) -> None:
    job = find(objs, "Job", "ai-service-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    assert configmap_data(objs, "ai-service-config")["MIGRATE_ON_START"] == "false"
    for obj in objs:
        for c in filter(ours, containers(obj)):
            assert (
                FIELD_BY_ENV["MIGRATE_ON_START"].parse(setting(objs, c, "MIGRATE_ON_START"))
                is False
            )


def _probe_port(container: Obj, probe: str) -> tuple[str, int]:
    get = container[probe]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    return get["path"], port


def test_api_deployment_service_pdb_and_probes(objs: list[Obj]) -> None:
    api = find(objs, "Deployment", "ai-service-api")
    c = api["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["api"]
    port = int(setting(objs, c, "HTTP_PORT"))
    assert _probe_port(c, "livenessProbe") == ("/healthz", port)
    assert _probe_port(c, "readinessProbe") == ("/readyz", port)
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    svc = find(objs, "Service", "ai-service-api")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    pdb = find(objs, "PodDisruptionBudget", "ai-service-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 < api["spec"]["replicas"]
    # stopping: routing drains during preStop, then uvicorn (10 s), the pool's close (5 s) and
    # the flushes (10 s), with a margin (the pool's close was left out: 30 s of 30)
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) >= 5
    grace = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(pre_stop[1]) + 10 + 5 + 10


def test_one_worker_deployment_per_channel(objs: list[Obj]) -> None:
    workers = [
        o
        for o in objs
        if o["kind"] == "Deployment"
        and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        == "worker"
    ]
    want = {deployment_name(p): p for p in channels(objs)}
    assert sorted(w["metadata"]["name"] for w in workers) == sorted(want)
    for w in workers:
        profile = want[w["metadata"]["name"]]
        c = w["spec"]["template"]["spec"]["containers"][0]
        assert c["args"] == ["worker", "--profile", profile]
        assert "replicas" not in w["spec"], "KEDA owns the replica count"
        port = int(setting(objs, c, "WORKER_HTTP_PORT"))
        assert _probe_port(c, "livenessProbe") == ("/healthz", port)
        assert _probe_port(c, "readinessProbe") == ("/readyz", port)
        grace = parse_duration(setting(objs, c, "WORKER_SHUTDOWN_GRACE"))
        # then the final writes, the pool's close and the trace and metric flushes (5 s each)
        after = FINAL_WRITES_TIMEOUT + 5 + 5 + 5
        assert w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= grace + after


def test_network_policies_cover_api_and_workers(objs: list[Obj]) -> None:
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    api = find(objs, "NetworkPolicy", "ai-service-api")["spec"]
    assert "Ingress" in api["policyTypes"]
    assert api["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
    worker = find(objs, "NetworkPolicy", "ai-service-worker")["spec"]
    assert "Egress" in worker["policyTypes"]
    egress_ports = {p["port"] for rule in worker["egress"] for p in rule.get("ports", [])}
    assert {53, 5432, 4317} <= egress_ports
    for p in policies:
        assert p["spec"]["podSelector"]["matchLabels"], "never select every pod of the namespace"
    # audio downloads reach public addresses only: not the metadata service, not the cluster
    (rule,) = find(objs, "NetworkPolicy", "ai-service-worker-audio-download")["spec"]["egress"]
    blocks = {b["ipBlock"]["cidr"]: set(b["ipBlock"]["except"]) for b in rule["to"]}
    assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= blocks[
        "0.0.0.0/0"
    ]
    assert {"fc00::/7", "fe80::/10"} <= blocks["::/0"]
    assert {p["port"] for p in rule["ports"]} == {80, 443}
    # the open worker port (status, metrics; no token) only from labelled namespaces
    (status,) = worker["ingress"]
    assert status["from"][0]["namespaceSelector"]["matchLabels"], status
    # OTLP only to the collector's namespace (the ConfigMap's address)
    endpoint = configmap_data(objs, "ai-service-config")["OTEL_EXPORTER_OTLP_ENDPOINT"]
    collector_ns = endpoint.split("//")[1].split(".")[1]
    for name in ("ai-service-api", "ai-service-worker"):
        (otlp,) = [r for r in find(objs, "NetworkPolicy", name)["spec"]["egress"]
                   if 4317 in {p["port"] for p in r["ports"]}]  # fmt: skip
        namespaces = [t["namespaceSelector"]["matchLabels"] for t in otlp["to"]]
        assert namespaces == [{"kubernetes.io/metadata.name": collector_ns}], (name, otlp)


def test_the_example_overlay_reaches_postgresql_only_on_its_own_cluster() -> None:
    objs = RENDERS["example"]
    (cluster,) = [o for o in objs if o["kind"] == "Cluster"]
    for name in ("ai-service-api", "ai-service-worker", "ai-service-migrate"):
        egress = find(objs, "NetworkPolicy", name)["spec"]["egress"]
        (pg,) = [r for r in egress if 5432 in {p["port"] for p in r["ports"]}]
        wanted = {"cnpg.io/cluster": cluster["metadata"]["name"]}
        assert pg["to"] == [{"podSelector": {"matchLabels": wanted}}], (name, pg)
        assert all("to" in r or 5432 not in {p["port"] for p in r["ports"]} for r in egress)


# --- KEDA -----------------------------------------------------------------------------------

SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
POSTGRES_TRIGGER_METADATA = {
    "query",
    "targetQueryValue",
    "activationTargetQueryValue",
    "connectionFromEnv",
    "host",
    "port",
    "userName",
    "passwordFromEnv",
    "dbName",
    "sslmode",
}


def database_url_source(objs: list[Obj], container: Obj) -> tuple[str, str]:
    ref = effective_env(objs, container)["DATABASE_URL"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_one_scaled_object_per_channel_with_matching_query(objs: list[Obj]) -> None:
    scaled = [o for o in objs if o["kind"] == "ScaledObject"]
    assert len(scaled) == len(channels(objs))
    auths = {o["metadata"]["name"]: o for o in objs if o["kind"] == "TriggerAuthentication"}
    for profile in channels(objs):
        name = deployment_name(profile)
        hits = [s for s in scaled if s["spec"]["scaleTargetRef"]["name"] == name]
        assert len(hits) == 1, f"{profile}: {len(hits)} ScaledObjects"
        so = hits[0]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "postgresql"
        meta = trigger["metadata"]
        assert set(meta) <= POSTGRES_TRIGGER_METADATA
        assert " ".join(meta["query"].split()) == expected_query(profile)
        assert float(meta["targetQueryValue"]) > 0
        # The scaler reads the same database the worker does.
        auth = auths[trigger["authenticationRef"]["name"]]
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ref["parameter"] == "connection"
        worker = find(objs, "Deployment", name)
        c = worker["spec"]["template"]["spec"]["containers"][0]
        assert (ref["name"], ref["key"]) == database_url_source(objs, c)


def test_scaling_target_matches_claim_limit(objs: list[Obj]) -> None:
    for so in (o for o in objs if o["kind"] == "ScaledObject"):
        worker = find(objs, "Deployment", so["spec"]["scaleTargetRef"]["name"])
        c = worker["spec"]["template"]["spec"]["containers"][0]
        limit = int(setting(objs, c, "WORKER_CLAIM_LIMIT"))
        assert float(so["spec"]["triggers"][0]["metadata"]["targetQueryValue"]) == limit


# --- CloudNativePG (example overlay) ---------------------------------------------------------


def test_cnpg_cluster_feeds_database_url() -> None:
    objs = RENDERS["example"]
    cluster = find(objs, "Cluster", "ai-service-db")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert isinstance(spec["instances"], int) and spec["instances"] >= 1
    assert re.fullmatch(r"\d+(Mi|Gi|Ti)", spec["storage"]["size"])
    initdb = spec["bootstrap"]["initdb"]
    assert initdb["database"] and initdb["owner"]
    assert cluster["metadata"]["namespace"] == "ai-service"
    # CloudNativePG generates `<cluster>-app` with the owner's connection URI under `uri`.
    want = (f"{cluster['metadata']['name']}-app", "uri")
    users = [o for o in objs if pod_spec(o) is not None]
    assert len(users) == 4
    for obj in users:
        for c in containers(obj):
            assert database_url_source(objs, c) == want, obj["metadata"]["name"]
    auth = find(objs, "TriggerAuthentication", "ai-service-postgres")
    assert (auth["spec"]["secretTargetRef"][0]["name"], "uri") == want


# Settings deliberately absent from the ConfigMap, and why.
NOT_IN_CONFIGMAP = {
    "EMBEDDED_PG_DATA": "ai-service dev only; the cluster uses DATABASE_URL",
    "WORKER_ID": "set per pod from its name",
    "WORKER_PROFILES": "each worker Deployment passes --profile",
    "WORKER_CLAIM_LIMITS": "one Deployment per profile: WORKER_CLAIM_LIMIT",
    "WORKER_NOTIFY": "benchmarks only",
    "METRICS_PORT": "metrics go over OTLP in the cluster",
}


def test_configmap_holds_every_setting(objs: list[Obj]) -> None:
    data = configmap_data(objs, "ai-service-config")
    wanted = {f.env for f in FIELDS if not f.secret} - set(NOT_IN_CONFIGMAP)
    assert not wanted - set(data), f"settings missing from the ConfigMap: {wanted - set(data)}"
    assert set(NOT_IN_CONFIGMAP) <= {f.env for f in FIELDS}
