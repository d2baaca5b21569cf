"""The package's layering, read from its source with ``ast``: which module may import which.

The backend and technique axes share what sits below both (perfgate.calibration, perfgate.fx_quant,
perfgate.data...) and never import each other; the plots never import the report that draws
them. Every import counts, one inside a function too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "perfgate"
# Below both axes: what they share must not lead back into either of them.
SHARED = ("perfgate.calibration", "perfgate.fx_quant", "perfgate.data", "perfgate.validation")


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (module level or not).

    ``from perfgate.backends import torch_fx_quant`` counts as importing both the package and the
    submodule; relative imports are resolved against ``name``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest import path from ``start`` back to itself, or ``None``."""
    parents: dict[str, str] = {}
    queue: deque[str] = deque()
    for first in sorted(graph[start]):
        parents[first] = start
        queue.append(first)
    while queue:
        node = queue.popleft()
        if node == start:
            path, step = [], parents[start]
            while step != start:
                path.append(step)
                step = parents[step]
            return [start, *reversed(path), start]
        for target in sorted(graph[node]):
            if target not in parents:
                parents[target] = node
                queue.append(target)
    return None


@pytest.mark.parametrize(("axis", "other"), [("backends", "techniques"), ("techniques", "backends")])
def test_an_axis_never_imports_the_other(axis: str, other: str) -> None:
    """A backend reads what a technique decided from its build request (the lowering, the parsed
    calibration); a technique is told the case's device. Neither imports the other's modules."""
    graph = import_graph()
    crossing = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if within(name, f"perfgate.{axis}")
        for target in targets
        if within(target, f"perfgate.{other}")
    )
    assert crossing == []


def test_what_the_axes_share_imports_neither_axis() -> None:
    """The homes below both axes (calibration settings, the FX qconfig, the data) stay below them."""
    graph = import_graph()
    upward = sorted(
        f"{name} imports {target}"
        for name in SHARED
        for target in graph[name]
        if within(target, "perfgate.backends") or within(target, "perfgate.techniques")
    )
    assert upward == []


@pytest.mark.parametrize("module", ["perfgate.report", "perfgate.plot"])
def test_the_report_and_the_plots_are_in_no_import_cycle(module: str) -> None:
    """The report draws the plots; the plots take the score and the size format from
    perfgate.pareto and perfgate.units, never from the report."""
    assert cycle_through(import_graph(), module) is None


def test_the_cycle_finder_finds_a_lazy_cycle() -> None:
    """The check above would see plot -> report -> (lazily) plot, as the code had it."""
    graph = {"a.report": {"a.plot"}, "a.plot": {"a.pareto", "a.report"}, "a.pareto": set()}
    assert cycle_through(graph, "a.report") == ["a.report", "a.plot", "a.report"]
    assert cycle_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert cycle_through({"a": {"b"}, "b": set()}, "a") is None


def test_the_registries_import_neither_torch_nor_numpy() -> None:
    """Listing the axes, reading a calibration or the runner's hardware module costs no heavy import:
    a backend's or a technique's module is imported when a case on it is built."""
    code = (
        "import sys, perfgate.backends, perfgate.techniques, perfgate.calibration, perfgate.hardware, "
        "perfgate.drift; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_naming_the_reference_imports_no_backend() -> None:
    """The report's speedup reference is a registered name: rendering a report (``perfgate
    report``) does not import torch to find it."""
    code = "import sys, perfgate.report as r; print(r.reference(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "('fp32', ('torch_cpu', 'sklearn', 'onnxruntime_cpu')) False"
