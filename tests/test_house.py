"""The house reads one way: the core imports nothing of the harness, no import circles, no upward imports.

Read from the source (every import, including those inside functions and under TYPE_CHECKING:
a circle closed by a lazy import is still a circle), like ``import_graph.py`` of the project's tools.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("qaclip_core", "qaclip_harness", "benchmarks")

# The harness's floors, lowest first: a module may import its own floor and the floors below.
LAYERS: list[list[str]] = [
    ["qaclip_core"],
    [
        "qaclip_harness",
        "qaclip_harness.errors",
        "qaclip_harness.optional",
        "qaclip_harness.options",
        "qaclip_harness.progress",
        "qaclip_harness.environment",
        "qaclip_harness.tensors",
    ],
    ["qaclip_harness.probe", "qaclip_harness.data", "qaclip_harness.metrics", "qaclip_harness.cache"],
    ["qaclip_harness.project"],
    ["qaclip_harness.fetch"],
    ["qaclip_harness.export"],
    ["qaclip_harness.backends"],
    ["qaclip_harness.convert", "qaclip_harness.eval", "qaclip_harness.fixture"],
    ["qaclip_harness.gates", "qaclip_harness.expected"],
    ["qaclip_harness.report", "qaclip_harness.calibrate", "qaclip_harness.record"],
    ["qaclip_harness.suite", "qaclip_harness.cli", "qaclip_harness.__main__", "qaclip_harness.pytest_plugin"],
    ["benchmarks"],
]
CORE_LINES_MAX = 2500


def _modules() -> dict[str, Path]:
    files = {}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            mod = ".".join(p.relative_to(REPO).with_suffix("").parts)
            files[mod[: -len(".__init__")] if mod.endswith(".__init__") else mod] = p
    return files


def _imports(files: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = mod.split(".")
                if node.level:
                    base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                else:
                    base = []
                stem = ".".join(base + ([node.module] if node.module else []))
                names = [stem] + [f"{stem}.{a.name}" for a in node.names]
            for imported in names:
                name = imported
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    edges[mod].add(name)
    return edges


def _floor(mod: str) -> int:
    best = (-1, -1)  # (length of the matching prefix, floor)
    for i, floor in enumerate(LAYERS):
        for prefix in floor:
            if (mod == prefix or mod.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), i)
    assert best[1] >= 0, f"{mod} belongs to no floor of LAYERS: add it where it belongs"
    return best[1]


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return _imports(_modules())


def test_no_import_circles(graph):
    assert not _circles(graph), f"import circles: {_circles(graph)}"


def test_no_import_runs_up_the_floors(graph):
    upward = [
        f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if _floor(b) > _floor(a)
    ]
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(upward)


def test_the_core_imports_nothing_of_the_harness(graph):
    reach = [
        f"{a} imports {b}"
        for a, targets in graph.items()
        if a.split(".")[0] == "qaclip_core"
        for b in targets
        if b.split(".")[0] != "qaclip_core"
    ]
    assert not reach, reach


def test_no_private_name_is_imported_across_packages():
    crossings = []
    for mod, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                target = node.module.split(".")
                if target[0] in PACKAGES and target[:2] != mod.split(".")[:2]:
                    crossings += [
                        f"{mod}: from {node.module} import {a.name}"
                        for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                    ]
    assert not crossings, crossings


def test_the_core_stays_small():
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in (REPO / "qaclip_core").rglob("*.py"))
    assert lines <= CORE_LINES_MAX, f"qaclip_core has {lines} lines of Python, more than {CORE_LINES_MAX}"


def test_importing_the_core_loads_no_harness_module():
    code = (
        "import sys, qaclip_core; qaclip_core.tokenize(['猫']); qaclip_core.available_models(); "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('qaclip_harness', 'benchmarks', "
        "'transformers', 'onnxruntime', 'huggingface_hub'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import qaclip_core loaded: {out.stdout.strip()}"


def test_layers_name_only_existing_packages():
    files = _modules()
    missing = [p for floor in LAYERS for p in floor if p not in files]
    assert not missing, f"LAYERS names modules that do not exist: {missing}"
