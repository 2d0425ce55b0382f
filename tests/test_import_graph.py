"""No import circles in losa_cache/ (with cli/ and pipelines/ as losa_cache.cli/.pipelines).

The graph is built from each module's *module-level* imports, read with :mod:`ast` (nothing
is imported, so a circle that Python happens to tolerate today is still caught):

- ``import a.b`` and ``from a.b import c`` are edges to ``a.b``; ``from a import b`` is an
  edge to ``a.b`` when ``b`` is a submodule, else to ``a`` (its ``__init__``).
- Relative imports are resolved against the importing module's package.
- Imports inside a function or method body are *lazy*: they run on first call, after every
  module has finished loading, so they cannot form a load-time circle and are not edges
  of :func:`test_no_import_cycles` (they remain for optional heavy dependencies and for the
  CLI's fast start). A lazy import must not hide a design circle either (a module below
  reaching up into one above it): :func:`test_lazy_imports_close_no_new_circles` checks
  the graph with lazy imports too, where only the edges of :data:`KNOWN_LAZY` may close
  a circle, each with the reason it is still there.
- Imports under ``if TYPE_CHECKING:`` never run and are not edges either.
- Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implicit parent
  edges are not added (a package ``__init__`` re-exporting its children would otherwise
  make every ``from package.child import x`` inside the package look circular), but the
  ``__init__`` modules' own imports are edges like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "losa_cache": ROOT / "losa_cache",
    "losa_cache.cli": ROOT / "cli",
    "losa_cache.pipelines": ROOT / "pipelines",
}


def _modules() -> dict[str, Path]:
    """Every module name -> its file, the installed names for cli/ and pipelines/."""
    mods: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            name = ".".join((pkg, *rel))
            if name.startswith("losa_cache.") and any(
                name.startswith(other + ".") or name == other
                for other in PACKAGES
                if other != pkg and other.startswith(pkg + ".")
            ):
                continue  # e.g. a stray losa_cache/cli/ folder: the mapped one wins
            mods[name] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


#: lazy imports that still close a circle (importer -> imported), each with why; the test
#: fails once one is gone, so that this list only shrinks
KNOWN_LAZY = {
    ("losa_cache.pipelines.accuracy", "losa_cache.pipelines.accuracy_views"): (
        "the harness's views part reuses the harness's helpers; splitting accuracy.py "
        "into helpers + parts is left to the harness's owner"
    ),
}


def _imports(tree: ast.Module, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module loads (not in a def, not under TYPE_CHECKING);
    ``lazy``: those inside functions too."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not lazy:
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports at load time (``lazy``: or later)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path)), lazy):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            edges |= {t for t in targets if t in mods and t != name}
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_a_cycle(graph, set(c)) for c in components]


def _a_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest circle through the component's first module, for the error message."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle in component {sorted(comp)}")


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_lazy_imports_close_no_new_circles() -> None:
    graph = import_graph(lazy=True)
    gone = [edge for edge in KNOWN_LAZY if edge[1] not in graph[edge[0]]]
    assert not gone, f"fixed: remove {gone} from KNOWN_LAZY"
    for src, dst in KNOWN_LAZY:
        graph[src] = graph[src] - {dst}
    cycles = find_cycles(graph)
    assert not cycles, "import circles through lazy imports:\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_the_checker_finds_a_cycle() -> None:
    """The checker itself: a planted circle is named, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_real_edges() -> None:
    """Relative, from-package and submodule imports all become edges."""
    graph = import_graph()
    assert "losa_cache.store.store" in graph["losa_cache.store"]
    assert "losa_cache.train.trainer" in graph["losa_cache.train"]
    assert len(graph) > 100
    lazy = import_graph(lazy=True)
    assert "losa_cache.baselines" in lazy["losa_cache.adapter"]  # inside load_adapter()
    assert "losa_cache.baselines" not in graph["losa_cache.adapter"]
