"""envs/*.yaml (used by `snakemake --sdm conda`) agree with pyproject.toml and with the code.

This machine cannot reach conda channels, so the environments cannot be built here; instead:
- every pin is exact and satisfies pyproject.toml's specifier, the same version in every env,
  and equal to requirements-pins.txt where that pins it;
- together the envs cover every pyproject dependency except the runner-only ones;
- every rule that runs a command names an env that exists, and that env holds (directly or
  through its pinned packages' own requirements) every third-party package the stage's
  modules import, found by reading the imports of the module and of the ghanet modules it uses.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
RULES = REPO / "workflow" / "rules"
PACKAGE = REPO / "ghanet_pipeline"
# Snakemake and its executor plugin drive the jobs; the jobs themselves do not import them.
RUNNER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _project_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def _env_files() -> list[Path]:
    return sorted(ENVS.glob("*.yaml"))


def _env_pins(path: Path) -> dict[str, Requirement]:
    """The pip section of one env file: canonical name -> requirement (each must be ==)."""
    spec = yaml.safe_load(path.read_text())
    pins = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                req = Requirement(line)
                pins[canonicalize_name(req.name)] = req
    return pins


def _conda_python(path: Path) -> str:
    spec = yaml.safe_load(path.read_text())
    found = [d for d in spec["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    assert len(found) == 1, f"{path.name}: exactly one 'python=X.Y' conda dependency expected, got {found}"
    return found[0].split("=", 1)[1]


def _exact_version(req: Requirement) -> str:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"'{req}' is not an exact pin (name==version)"
    return specs[0].version


def test_env_files_exist_with_post_deploy_scripts():
    envs = _env_files()
    assert len(envs) >= 4, f"expected one env per rule group in {ENVS}, found {[e.name for e in envs]}"
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        assert spec["name"] == f"ghanet-{env.stem}", f"{env.name}: name should be ghanet-{env.stem}"
        assert "conda-forge" in spec["channels"]
        script = env.with_name(f"{env.stem}.post-deploy.sh")
        assert script.is_file(), f"{script.name} missing: it installs the ghanet package into the env"
        assert "GHANET_REPO" in script.read_text()
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_pins_are_exact_and_satisfy_pyproject():
    project = _project_requirements()
    requires_python = _pyproject()["project"]["requires-python"]
    seen: dict[str, tuple[str, str]] = {}
    for env in _env_files():
        python = _conda_python(env)
        assert Version(python) in Requirement(f"python{requires_python}").specifier, (
            f"{env.name}: python={python} outside requires-python {requires_python}")
        for name, req in _env_pins(env).items():
            version = _exact_version(req)
            assert name in project, f"{env.name}: {req.name} is not a dependency in pyproject.toml; add it there first"
            assert project[name].specifier.contains(version, prereleases=True), (
                f"{env.name}: {req.name}=={version} violates pyproject.toml's '{project[name]}'")
            assert req.extras == project[name].extras, (
                f"{env.name}: {req} should carry pyproject's extras {sorted(project[name].extras)}")
            if name in seen:
                assert seen[name][0] == version, (
                    f"{req.name} pinned {seen[name][0]} in {seen[name][1]} but {version} in {env.name}")
            seen[name] = (version, env.name)


def test_pins_equal_requirements_pins_file():
    pins = {}
    for line in (REPO / "requirements-pins.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = _exact_version(req)
    assert pins, "requirements-pins.txt pins nothing?"
    for env in _env_files():
        for name, req in _env_pins(env).items():
            if name in pins:
                assert _exact_version(req) == pins[name], f"{env.name}: {req} but requirements-pins.txt says {pins[name]}"


def test_envs_cover_every_dependency():
    covered = set()
    for env in _env_files():
        covered |= set(_env_pins(env))
    missing = set(_project_requirements()) - covered - RUNNER_ONLY
    assert not missing, f"pyproject.toml dependencies in no envs/*.yaml: {sorted(missing)}"


# ----------------------------------------------------------------------------- rules -> envs -> imports


def _rule_blocks() -> list[dict]:
    """name, env (conda directive), stage (the `ghanet <stage>` the shell command calls) of every rule."""
    blocks = []
    for path in sorted(RULES.glob("*.smk")):
        text = path.read_text()
        starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\s*rule (\w+):", text, flags=re.M)]
        for i, (start, name) in enumerate(starts):
            body = text[start: starts[i + 1][0] if i + 1 < len(starts) else len(text)]
            conda = re.search(r"conda:\s*\n?\s*\"([^\"]+)\"", body)
            stage = re.search(r"\"ghanet ([\w-]+)", body)
            blocks.append({"file": path, "name": name, "env": conda.group(1) if conda else None,
                           "stage": stage.group(1) if stage else None, "shell": "shell:" in body})
    return blocks


def test_every_command_rule_names_an_existing_env():
    blocks = [b for b in _rule_blocks() if b["shell"]]
    assert blocks, f"no rules with a shell command found under {RULES}"
    for block in blocks:
        assert block["env"], f"rule {block['name']} ({block['file'].name}) has no conda: directive"
        env = (block["file"].parent / block["env"]).resolve()
        assert env.is_file() and env.parent == ENVS, f"rule {block['name']}: conda env {block['env']} is not in envs/"


def _module_file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _optional_import_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `try: ... except ImportError` (the code copes without them)."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            caught = set()
            for handler in node.handlers:
                kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                caught |= {k.id for k in kinds if isinstance(k, ast.Name)}
            if caught & {"ImportError", "ModuleNotFoundError"}:
                for sub in node.body:
                    optional |= {id(n) for n in ast.walk(sub) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return optional


@lru_cache(maxsize=None)
def _direct_imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(ghanet modules, third-party top-level names) one module imports, at any depth of its code."""
    path = _module_file(module)
    if path is None:
        return frozenset(), frozenset()
    tree = ast.parse(path.read_text())
    optional = _optional_import_nodes(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    internal, external = set(), set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                (internal if alias.name.startswith("ghanet_pipeline") else external).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("ghanet_pipeline"):
                internal.add(target)
                internal |= {f"{target}.{alias.name}" for alias in node.names}
            else:
                external.add(target)
    internal = {m for m in internal if _module_file(m)}
    return frozenset(internal), frozenset(e.split(".")[0] for e in external if e)


def _third_party_imports(module: str) -> set[str]:
    todo, seen, found = [module, "ghanet_pipeline"], set(), set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        internal, external = _direct_imports(current)
        found |= external
        todo += sorted(internal)
    return {name for name in found if name not in sys.stdlib_module_names}


def _installed_closure(names: set[str]) -> set[str]:
    """The distributions `pip install names` brings, read from this environment's metadata."""
    todo, seen = list(names), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_each_env_holds_what_its_stages_import():
    from ghanet_pipeline.cli import STAGES

    top_to_dist = md.packages_distributions()
    by_env: dict[str, set[str]] = {}
    for block in _rule_blocks():
        if block["stage"] and block["env"]:
            assert block["stage"] in STAGES, f"rule {block['name']} calls unknown 'ghanet {block['stage']}'"
            by_env.setdefault(Path(block["env"]).stem, set()).add(STAGES[block["stage"]].module_path)
    assert by_env, "no rule runs a ghanet stage with a conda env"
    problems = []
    for env_name, modules in sorted(by_env.items()):
        available = _installed_closure(set(_env_pins(ENVS / f"{env_name}.yaml")))
        for module in sorted(modules):
            if _module_file(module) is None:
                pytest.skip(f"{module} is not written yet")
            for top in sorted(_third_party_imports(module)):
                dists = {canonicalize_name(d) for d in top_to_dist.get(top, [top])}
                if not dists & available:
                    problems.append(f"envs/{env_name}.yaml lacks {sorted(dists)} (imported as '{top}' by {module})")
    assert not problems, "\n".join(problems)
