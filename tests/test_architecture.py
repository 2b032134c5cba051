"""The package's shape, checked: imports run one way, stages are thin and registered, every
output path is spelt in io/layout.py, every stage record is documented, functions stay short."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

import ghanet_pipeline
from ghanet_pipeline import cli
from ghanet_pipeline.contracts.base import VERSION_KEY, Record

PACKAGE = Path(ghanet_pipeline.__file__).parent
REPO = PACKAGE.parent
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that ``name`` imports anywhere in its file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            candidates = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for candidate in candidates:
            # `import a.b.c` loads a, a.b and a.b.c; count the deepest package module named
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and candidate != "ghanet_pipeline":
                out.add(candidate)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    # a package's __init__ is not a dependency edge by itself: importing a.b runs a/__init__
    # too, but our __init__ files import nothing but what they re-export
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_dependencies_point_down_from_cli_to_stages_to_the_library():
    graph = _graph()
    for name, deps in graph.items():
        if name == "ghanet_pipeline.cli" or name.startswith("ghanet_pipeline.__main__"):
            continue
        assert "ghanet_pipeline.cli" not in deps, f"{name} imports cli: the CLI sits above every stage"
        if not name.startswith("ghanet_pipeline.stages"):
            below = [d for d in deps if d.startswith("ghanet_pipeline.stages")]
            assert not below, f"library module {name} imports stage modules {below}"


def test_every_subcommand_is_a_registered_stage_module():
    stage_files = {m.name for m in pkgutil.iter_modules([str(PACKAGE / "stages")])} - {"arguments"}
    registered = set()
    for name, stage in cli.STAGES.items():
        module = stage.load()
        assert module.__name__.startswith("ghanet_pipeline.stages."), name
        assert callable(module.add_arguments) and callable(module.main), name
        registered.add(module.__name__.rpartition(".")[2])
        parser = cli.build_parser(name)  # builds without error, flags included
        assert parser.prog == f"ghanet {name}"
    assert registered == stage_files, f"stage modules not registered in cli.STAGES: {stage_files - registered}"


def test_output_paths_are_spelt_only_in_the_layout():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "layout.py" and path.parent.name == "io":
            continue
        if path.parent.name == "demo":  # the demo cohort's own folder (demo_data/), not the run's
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"/\s*[\"'](tiles|qc|status|heatmaps|models|features|genomics|report|logs)[\"']", code) or \
                    re.search(r"[\"'](result\.json|summary\.json|checkpoint_(final|best)\.pt|resume\.pt|predictions_val\.csv|"
                              r"manifest\.csv|predictions\.csv|index\.html|patients\.csv|groups\.json|split\.json|"
                              r"genomics\.parquet|scaler\.json|targets\.json|metrics\.csv)[\"']", code) or \
                    re.search(r"f[\"'][^\"']*\}(_topk)?\.(zarr|png|geojson|json|csv|pt)[\"']", code):  # a per-slide file
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "output paths spelt outside io/layout.py:\n" + "\n".join(offenders)


def _records() -> list[type[Record]]:
    found = []
    for info in pkgutil.iter_modules([str(PACKAGE / "contracts")]):
        module = importlib.import_module(f"ghanet_pipeline.contracts.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Record) and value is not Record \
                    and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_every_stage_record_is_frozen_versioned_and_documented():
    records = _records()
    assert len(records) >= 6, [r.__name__ for r in records]
    docs = (REPO / "docs" / "contracts.md").read_text()
    assert f"`{VERSION_KEY}`" in docs
    for record in records:
        assert dataclasses.is_dataclass(record) and record.__dataclass_params__.frozen, record
        assert re.search(rf"\b{record.__name__}\b", docs), f"docs/contracts.md does not name {record.__name__}"
        undocumented = [f.name for f in dataclasses.fields(record) if not re.search(rf"`{f.name}\b", docs)]
        assert not undocumented, f"{record.__name__}: fields missing from docs/contracts.md: {undocumented}"


def test_functions_stay_short():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
