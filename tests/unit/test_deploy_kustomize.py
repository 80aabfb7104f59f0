"""A minimal, honest kustomize renderer for deploy/k8s, and the proof that it renders what
real kustomize renders.

Why our own renderer: the test suite must run offline without a kustomize binary (CI machines
do not all have one). It implements exactly the kustomization features deploy/k8s uses —
``resources`` (files and directories), ``namespace``, ``labels`` (without selectors),
``images`` and JSON 6902 ``patches`` with a ``target`` — and raises on anything else, so a new
feature in a kustomization cannot be silently ignored. Where ``kubectl`` (which embeds
kustomize) is on PATH, ``test_matches_real_kustomize`` compares both renders object by object.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "example"]

Obj = dict[str, Any]

_SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
# Kinds that are not namespaced (the namespace transformer leaves them alone).
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ClusterTriggerAuthentication",
}
# Where a kind keeps its pod template (for labels.includeTemplates and images).
_POD_TEMPLATE = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class Unsupported(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def load_yaml_docs(path: Path) -> list[Obj]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(directory: Path) -> list[Obj]:
    """Render the kustomization in ``directory`` like ``kustomize build`` would."""
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    unknown = set(spec) - _SUPPORTED
    if unknown:
        raise Unsupported(f"{kfile}: fields not implemented by the test renderer: {unknown}")
    objs: list[Obj] = []
    for res in spec.get("resources", []):
        path = (directory / res).resolve()
        objs.extend(render(path) if path.is_dir() else load_yaml_docs(path))
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, objs)
    if "namespace" in spec:
        _set_namespace(objs, spec["namespace"])
    for entry in spec.get("labels", []):
        _add_labels(objs, entry)
    for image in spec.get("images", []):
        _set_image(objs, image)
    return objs


def _set_namespace(objs: list[Obj], namespace: str) -> None:
    for obj in objs:
        if obj["kind"] == "Namespace":
            if obj["metadata"]["name"] != namespace:
                raise Unsupported("renaming a Namespace object is not implemented")
            continue
        if obj["kind"] in _CLUSTER_SCOPED:
            continue
        obj["metadata"]["namespace"] = namespace


def _add_labels(objs: list[Obj], entry: Obj) -> None:
    if set(entry) - {"pairs", "includeTemplates", "includeSelectors"}:
        raise Unsupported(f"labels entry {entry}")
    if entry.get("includeSelectors"):
        raise Unsupported("labels.includeSelectors (selectors are immutable; we never use it)")
    pairs = entry["pairs"]
    for obj in objs:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        template = _pod_template(obj)
        if entry.get("includeTemplates") and template is not None:
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _pod_template(obj: Obj) -> Obj | None:
    path = _POD_TEMPLATE.get(obj["kind"])
    node: Any = obj
    for key in path or ():
        node = node.get(key) if isinstance(node, dict) else None
    return node if path and isinstance(node, dict) else None


def _split_image(image: str) -> tuple[str, str]:
    """``name[:tag]`` → (name, ":tag"); a digest or a registry port is kept right."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_image(objs: list[Obj], rule: Obj) -> None:
    if set(rule) - {"name", "newName", "newTag"}:
        raise Unsupported(f"images entry {rule}")
    for obj in objs:
        template = _pod_template(obj)
        if template is None:
            continue
        pod = template.get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag = _split_image(c["image"])
            if name != rule["name"]:
                continue
            if "newTag" in rule:
                tag = ":" + str(rule["newTag"])
            c["image"] = rule.get("newName", name) + tag


def _matches(obj: Obj, target: Obj) -> bool:
    if set(target) - {"group", "version", "kind", "name", "namespace", "labelSelector"}:
        raise Unsupported(f"patch target {target}")
    group, _, version = obj["apiVersion"].rpartition("/")
    meta = obj["metadata"]
    checks = [
        ("group", group),
        ("version", version),
        ("kind", obj["kind"]),
        ("name", meta.get("name")),
        ("namespace", meta.get("namespace")),
    ]
    if any(key in target and target[key] != value for key, value in checks):
        return False
    for term in filter(None, target.get("labelSelector", "").split(",")):
        if "=" not in term or "!=" in term:
            raise Unsupported(f"label selector term {term!r} (only key=value is implemented)")
        key, value = (s.strip() for s in term.split("=", 1))
        if meta.get("labels", {}).get(key) != value:
            return False
    return True


def _apply_patch(directory: Path, patch: Obj, objs: list[Obj]) -> None:
    if set(patch) - {"path", "patch", "target"} or "target" not in patch:
        raise Unsupported(f"patch {patch}: only JSON 6902 patches with a target")
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise Unsupported("strategic-merge patches are not implemented")
    hits = [o for o in objs if _matches(o, patch["target"])]
    if not hits:
        raise AssertionError(f"patch {patch} matches no resource")
    for obj in hits:
        for op in ops:
            _json6902(obj, op)


def _json6902(doc: Obj, op: Obj) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent: Any = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    kind = op["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[index]
        else:
            raise Unsupported(f"JSON patch op {kind}")
        return
    if kind in ("add", "replace"):
        if kind == "replace" and last not in parent:
            raise AssertionError(f"replace of a missing path {op['path']}")
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[last]
    else:
        raise Unsupported(f"JSON patch op {kind}")


def key(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def by_key(objs: list[Obj]) -> dict[tuple[str, str, str, str], Obj]:
    out = {key(o): o for o in objs}
    assert len(out) == len(objs), "two resources with the same apiVersion/kind/namespace/name"
    return out


# --- tests of the renderer itself --------------------------------------------------------


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_renders_without_unsupported_features(directory: Path) -> None:
    objs = render(directory)
    assert objs
    by_key(objs)


def test_json6902_ops_and_escapes() -> None:
    doc: Obj = {"a": {"b/c": [1, 2]}, "x": 1}
    _json6902(doc, {"op": "add", "path": "/a/b~1c/-", "value": 3})
    _json6902(doc, {"op": "replace", "path": "/a/b~1c/0", "value": 0})
    _json6902(doc, {"op": "remove", "path": "/x"})
    assert doc == {"a": {"b/c": [0, 2, 3]}}
    with pytest.raises(AssertionError):
        _json6902(doc, {"op": "replace", "path": "/missing", "value": 1})


def test_unknown_kustomization_field_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("commonLabels: {a: b}\nresources: []\n")
    with pytest.raises(Unsupported):
        render(tmp_path)


def test_image_split() -> None:
    assert _split_image("registry:5000/ai-service:1.2") == ("registry:5000/ai-service", ":1.2")
    assert _split_image("registry:5000/ai-service") == ("registry:5000/ai-service", "")
    assert _split_image("ai-service@sha256:ab") == ("ai-service", "@sha256:ab")


def _kubectl_kustomize() -> list[str] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    probe = subprocess.run(
        [kubectl, "kustomize", "--help"], capture_output=True, text=True, timeout=30
    )
    return [kubectl, "kustomize"] if probe.returncode == 0 else None


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_matches_real_kustomize(directory: Path) -> None:
    command = _kubectl_kustomize()
    if command is None:
        pytest.skip("kubectl (with built-in kustomize) is not on PATH; renderer not cross-checked")
    out = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    real = by_key([d for d in yaml.safe_load_all(out) if d is not None])
    ours = by_key(render(directory))
    assert sorted(real) == sorted(ours)
    for k, obj in ours.items():
        assert json.dumps(obj, sort_keys=True) == json.dumps(real[k], sort_keys=True), k
