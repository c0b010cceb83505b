"""The package's layers point down and its import graph has no circles (docs/architecture.md).

Every ``import medsam3...`` in ``src/medsam3`` is read with ``ast`` (module level, inside
functions, and under ``if TYPE_CHECKING:``), so the rule stays true as the code changes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# A module may import modules of its own layer or of a lower rank; layers of equal rank
# (reports, training) do not import each other.
RANKS = {
    "base": 0,
    "io": 1,
    "models": 2,
    "reports": 3,
    "training": 3,
    "agent": 4,
    "pipeline": 5,
    "top": 6,
}
BASE = {"medsam3._version", "medsam3.types", "medsam3.logs"}
TOP = {"medsam3", "medsam3.cli"}

# Modules allowed to import medsam3 modules inside functions, and why.
LAZY_INTERNAL_IMPORTS = {
    "medsam3.cli": "each subcommand imports its own module: --help in 0.2 s instead of 2.7 s",
    "medsam3.models.build": "backends import torch (7 s) when one is built, not on import",
    "medsam3": "the agent's segmenter imports torch: only when load_model(agent=...) asks",
}


@dataclass(frozen=True)
class Edge:
    """One import of a medsam3 module by another."""

    source: str
    target: str
    line: int
    top_level: bool
    type_checking: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted((SRC / "medsam3").rglob("*.py"))}


def layer_of(module: str) -> str:
    """The layer a medsam3 module belongs to."""
    if module in BASE:
        return "base"
    if module in TOP:
        return "top"
    layer = module.split(".")[1]
    assert layer in RANKS, f"{module} is in no layer; add its folder to tests/test_architecture.py"
    return layer


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    """medsam3 modules named by an import statement (``from pkg import mod`` names the module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "medsam3"]
    if node.level or not node.module or node.module.split(".")[0] != "medsam3":
        return []
    names = [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n in MODULES] or [node.module]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, source: str, top: bool, typing_only: bool, out: list[Edge]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            for target in _targets(child):
                out.append(Edge(source, target, child.lineno, top, typing_only))
        elif isinstance(child, ast.If) and _is_type_checking(child):
            _walk(child, source, top, True, out)
        else:
            nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            _walk(child, source, top and not nested, typing_only, out)


def import_edges(path: Path, module: str) -> list[Edge]:
    """Every medsam3 import of one file."""
    edges: list[Edge] = []
    _walk(ast.parse(path.read_text(encoding="utf-8")), module, True, False, edges)
    return edges


EDGES = [e for module, path in MODULES.items() for e in import_edges(path, module)]


def _cycles(edges: list[Edge]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.source != e.target:
            graph.setdefault(e.source, set()).add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_import_names_an_existing_module():
    for folder in ("src", "tests", "benchmarks", "workflow/scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for edge in import_edges(path, str(path.relative_to(REPO))):
                assert edge.target in MODULES or edge.target == "medsam3", (
                    f"{edge.source}:{edge.line} imports {edge.target}, which does not exist"
                )


def test_layers_point_down():
    upward = []
    for e in EDGES:
        source, target = layer_of(e.source), layer_of(e.target)
        if source != target and RANKS[target] >= RANKS[source]:
            upward.append(f"{e.source}:{e.line} ({source}) imports {e.target} ({target})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_circles():
    runtime = [e for e in EDGES if not e.type_checking]
    circles = _cycles(runtime)
    assert not circles, f"import circles: {circles}"


def test_internal_imports_are_at_module_top():
    lazy = [
        f"{e.source}:{e.line} imports {e.target} inside a function"
        for e in EDGES
        if not e.top_level and e.source not in LAZY_INTERNAL_IMPORTS
    ]
    assert not lazy, "\n".join(lazy)


def test_the_checker_sees_circles_and_upward_arrows(tmp_path):
    """The graph walk and the cycle search on a made-up package (guards the guard)."""
    code = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import medsam3.a\n"
    code += "def f():\n    from medsam3.io import common\n"
    (tmp_path / "m.py").write_text(code, encoding="utf-8")
    edges = import_edges(tmp_path / "m.py", "medsam3.models.m")
    assert [(e.target, e.top_level, e.type_checking) for e in edges] == [
        ("medsam3.a", True, True),
        ("medsam3.io.common", False, False),
    ]
    loop = [Edge("a", "b", 1, True, False), Edge("b", "c", 1, True, False)]
    assert _cycles(loop) == [] and _cycles([*loop, Edge("c", "a", 1, True, False)])
    assert layer_of("medsam3.pipeline.layout") == "pipeline" and layer_of("medsam3") == "top"
    assert RANKS["models"] < RANKS["agent"] < RANKS["pipeline"]
