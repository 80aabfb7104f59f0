"""Static checks of the container image definition: Dockerfile, .dockerignore and the pinned
runtime lock. No Docker engine exists where these run, so nothing here builds the image; the
tests check what the build would do."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, args = line.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_defaults() -> dict[str, str]:
    out = {}
    for word, args in instructions():
        if word == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            out[name] = value
    return out


def test_multi_stage_with_pinned_bases() -> None:
    defaults = arg_defaults()
    bases = []
    for word, args in instructions():
        if word == "FROM":
            image = args.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
            bases.append(image)
    assert len(bases) >= 2, "builder and runtime stages"
    for image in bases:
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and not tag.startswith("latest"), image
        assert "slim" in tag, f"{image}: use a slim base"


def test_runs_as_non_root() -> None:
    final = stages()[-1]
    users = [args for word, args in final if word == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_stop_signal_and_entry_point() -> None:
    final = dict(stages()[-1])
    assert final["STOPSIGNAL"] == "SIGTERM"
    entry = json.loads(final["ENTRYPOINT"])
    assert entry == ["ai-service"]
    assert entry[0] in PYPROJECT["project"]["scripts"]
    target = PYPROJECT["project"]["scripts"][entry[0]]
    module, _, func = target.partition(":")
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert func in {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}


def test_sql_dir_is_installed_and_configured() -> None:
    final = stages()[-1]
    copies = [args.split() for word, args in final if word == "COPY"]
    assert ["sql", "/app/sql"] in copies
    env = " ".join(args for word, args in final if word == "ENV")
    assert "AI_SERVICE_SQL_DIR=/app/sql" in env
    assert "AI_SERVICE_SQL_DIR" in (ROOT / "service/db/queries.py").read_text()
    assert (ROOT / "sql").is_dir()


def test_dependencies_come_from_the_lock() -> None:
    builder = stages()[0]
    runs = [args for word, args in builder if word == "RUN"]
    assert any("-r requirements.lock" in r for r in runs)
    project_installs = [r for r in runs if re.search(r"pip install .*(\s\.$|\s\.\s)", r)]
    assert project_installs and all("--no-deps" in r for r in project_installs)


def test_no_secrets_baked_in() -> None:
    secretish = re.compile(r"(TOKEN|PASSWORD|SECRET|API_KEY|DATABASE_URL)", re.I)
    for word, args in instructions():
        if word in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(args), f"{word} {args}"


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) for p in prefixes) or (
            pat.startswith("**/") and any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_copy_needs_and_drops_the_rest() -> None:
    patterns = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    for word, args in instructions():
        if word == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                assert not _ignored(src.rstrip("/"), patterns), src
    for unwanted in (".git", ".venv", "tests", "bench", ".env", "deploy", "service/x.pyc"):
        assert _ignored(unwanted, patterns), unwanted


def lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_lock_pins_every_runtime_dependency() -> None:
    pins = lock()
    for text in PYPROJECT["project"]["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is missing from requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])
        if "binary" in req.extras and name == "psycopg":
            assert "psycopg-binary" in pins


def test_lock_has_no_dev_tools() -> None:
    dev = {canonicalize_name(Requirement(d).name) for d in PYPROJECT["project"].get(
        "optional-dependencies", {}).get("dev", [])}  # fmt: skip
    assert not dev & set(lock())


def test_every_imported_distribution_is_locked() -> None:
    """Third-party modules imported anywhere in service/ come from a locked distribution."""
    imported: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"service", "__future__"}
    owners = metadata.packages_distributions()
    pins = lock()
    for module in sorted(third_party):
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        assert dists, f"{module} is imported but not installed"
        assert dists & set(pins), f"{module} ({dists}) is not in requirements.lock"
