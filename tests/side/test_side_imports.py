"""No import circles in side/, train/ and sweep/ (type-checking and lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import losa_cache

ROOT = Path(losa_cache.__file__).parent
PACKAGES = ("side", "train", "sweep")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports; ``from pkg import name`` counts as ``pkg.name`` when
    that is a module."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("losa_cache")
        ):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if _is_module(sub) else node.module)
    return {m for m in out if m.startswith("losa_cache.")}


def test_no_import_circles() -> None:
    graph = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).glob("*.py"):
            if path.name != "__init__.py":  # a package's door imports its modules
                graph[_module(path)] = _imports(path)
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        if seen.get(node) == 2 or node not in graph:
            return
        assert seen.get(node) != 1, "import circle: " + " -> ".join([*stack, node])
        seen[node] = 1
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node])
        seen[node] = 2

    for node in sorted(graph):
        visit(node, [])
