"""Stage imports go downward only: core (cdx/*.py) → distill → runtimes → convert → benchmarks, with no cycles.

Every module's imports are read from its AST (module level and inside functions, since lazy imports are how cycles
hide), mapped to the module they name, and checked against the stage order. The checker is also run on a planted
violation and a planted cycle, so the test can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# repository folder → import package (pyproject's package-dir)
PACKAGES = {"cdx": "cdx", "distill": "cdx.distill", "runtimes": "cdx.runtimes", "convert": "cdx.convert",
            "benchmarks": "cdx.benchmarks"}
# what each stage may import (besides itself)
ALLOWED = {
    "core": {"core"},
    "distill": {"core"},
    "runtimes": {"core", "distill"},
    "convert": {"core", "distill", "runtimes"},
    "benchmarks": {"core", "distill", "runtimes", "convert"},
    "entry": {"core", "distill", "runtimes", "convert", "benchmarks"},
}
# the command line and the demo are the application on top of every stage, not part of the core
ENTRY_POINTS = {"cdx.cli", "cdx.demo", "cdx.__main__"}


def stage_of(module: str) -> str | None:
    """The stage of a cdx module name (None for third-party modules)."""
    if module in ENTRY_POINTS:
        return "entry"
    parts = module.split(".")
    if parts[0] != "cdx":
        return None
    if len(parts) > 1 and parts[1] in ("distill", "runtimes", "convert", "benchmarks"):
        return parts[1]
    return "core"


def module_files() -> dict[str, Path]:
    """Every cdx module of the repository, by import name (cdx/assets holds shipped model files, not modules)."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Names of the cdx modules `source` imports anywhere (module level, functions, `if TYPE_CHECKING:` blocks)."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from cdx.convert import golden`
    return {name for name in found if name.split(".")[0] == "cdx"}


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module → the known modules it imports (names that are attributes, not modules, are dropped)."""
    known = set(sources)
    graph = {}
    for module, (source, is_package) in sources.items():
        graph[module] = {name for name in imported_modules(source, module, is_package) if name in known} - {module}
    return graph


def stage_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up (or sideways) the stage order."""
    problems = []
    for module, targets in sorted(graph.items()):
        stage = stage_of(module)
        for target in sorted(targets):
            other = stage_of(target)
            if other is not None and other != stage and other not in ALLOWED[stage]:
                problems.append(f"{module} ({stage}) imports {target} ({other})")
    return problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def package_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle between stages (e.g. runtimes → convert → runtimes through different modules)."""
    stages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        stage = stage_of(module)
        stages.setdefault(stage, set()).update(s for t in targets if (s := stage_of(t)) not in (None, stage))
    return find_cycle(stages)


def repository_graph() -> dict[str, set[str]]:
    files = module_files()
    return import_graph({name: (path.read_text("utf-8"), path.stem == "__init__") for name, path in files.items()})


def test_every_stage_imports_only_the_stages_below_it() -> None:
    graph = repository_graph()
    assert {"cdx.metrics", "cdx.distill.sampling", "cdx.runtimes.eager", "cdx.convert.export",
            "cdx.benchmarks.bench"} <= set(graph), "the module scan missed a stage"
    assert stage_violations(graph) == []


def test_no_import_cycles_between_modules_or_stages() -> None:
    graph = repository_graph()
    assert find_cycle(graph) is None
    assert package_cycle(graph) is None


def test_function_level_and_relative_imports_are_seen() -> None:
    source = "import numpy\nfrom . import sampling\n\ndef f():\n    from cdx.convert.parity import parity_gate\n"
    assert imported_modules(source, "cdx.runtimes.eager", False) == {
        "cdx.runtimes", "cdx.runtimes.sampling", "cdx.convert.parity", "cdx.convert.parity.parity_gate"}


@pytest.mark.parametrize(("importer", "imported"), [
    ("cdx.metrics", "cdx.benchmarks.quality"),  # core reaching up
    ("cdx.distill.sampling", "cdx.runtimes.base"),  # distill above the core
    ("cdx.runtimes.eager", "cdx.convert.generator"),  # the cycle issue 14 found
    ("cdx.convert.parity", "cdx.benchmarks.metrics"),
])
def test_a_planted_upward_import_is_caught(importer: str, imported: str) -> None:
    sources = {importer: (f"def f():\n    from {imported} import x\n", False), imported: ("x = 1\n", False)}
    assert stage_violations(import_graph(sources)) == [
        f"{importer} ({stage_of(importer)}) imports {imported} ({stage_of(imported)})"]


def test_a_planted_cycle_is_caught() -> None:
    sources = {"cdx.convert.a": ("from cdx.convert.b import y\n", False),
               "cdx.convert.b": ("def g():\n    import cdx.convert.a\n", False),
               "cdx.convert.c": ("from cdx import metrics\n", False), "cdx.metrics": ("", False)}
    graph = import_graph(sources)
    assert stage_violations(graph) == []
    assert find_cycle(graph) == ["cdx.convert.a", "cdx.convert.b", "cdx.convert.a"]
    stages = import_graph({"cdx.runtimes.eager": ("from cdx.convert.generator import G\n", False),
                           "cdx.convert.generator": ("from cdx.runtimes.base import R\n", False),
                           "cdx.runtimes.base": ("R = 1\n", False)})
    assert package_cycle(stages) == ["convert", "runtimes", "convert"]
