"""The library's layering: no import cycle between kmtools modules, and kmtools never imports
the CLI (kmtools_cli). Imports are read from the source (ast), function-level ones included,
``if TYPE_CHECKING:`` blocks excluded. Importing ``a.b.c`` also counts as importing the
packages ``a.b`` it runs (their ``__init__``), except the importer's own ancestors (which are
already running). docs/architecture.md says which layer may import which.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# No exceptions: the last one (explain/baselines <-> explain/evaluate) went when the KDE moved
# to explain/kde.py.
ALLOWED_CYCLES: list[set[str]] = []


def modules(root: Path, package: str = "kmtools") -> dict[str, Path]:
    out = {}
    for p in sorted((root / package).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_pkg: bool, mods: dict[str, Path]) -> list[str]:
    """Every absolute name imported in ``tree``: ``from x import y`` gives the module ``x.y``
    when there is one, else ``x`` (``y`` is then a name defined in ``x``)."""
    names: list[str] = []
    pkg = module if is_pkg else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for n in node.orelse:
                visit(n)
            return
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.extend(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph(root: Path, package: str = "kmtools") -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the package's modules, other top-level names each module imports)."""
    mods = modules(root, package)
    edges: dict[str, set[str]] = {}
    foreign: dict[str, set[str]] = {}
    for m, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets: set[str] = set()
        foreign[m] = set()
        for name in _imported_names(tree, m, path.name == "__init__.py", mods):
            if not (name == package or name.startswith(package + ".")):
                foreign[m].add(name.split(".")[0])
                continue
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
        ancestors = {m.rsplit(".", i)[0] for i in range(1, m.count(".") + 1)} | (
            {m} if path.name == "__init__.py" else set()
        )
        for t in list(targets):
            while "." in t:
                t = t.rpartition(".")[0]
                if t != package and t not in ancestors:
                    targets.add(t)
        targets.discard(m)
        edges[m] = targets
    return edges, foreign


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in edges:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(comp)
    return found


def _path(edges: dict[str, set[str]], comp: set[str]) -> str:
    """One cycle through ``comp``, for the failure message."""
    start = min(comp)
    seen = [start]
    cur = start
    while True:
        nxt = min(t for t in edges[cur] if t in comp)
        if nxt in seen:
            return " -> ".join([*seen[seen.index(nxt):], nxt])
        seen.append(nxt)
        cur = nxt


def test_no_import_cycles_in_kmtools() -> None:
    edges, _ = import_graph(ROOT)
    assert len(edges) > 50, "the walk found too few modules"
    bad = [c for c in cycles(edges) if c not in ALLOWED_CYCLES]
    assert not bad, "import cycles in kmtools:\n" + "\n".join(_path(edges, c) for c in bad)


def test_kmtools_does_not_import_the_cli() -> None:
    _, foreign = import_graph(ROOT)
    bad = sorted(m for m, names in foreign.items() if names & {"kmtools_cli", "cli", "typer", "rich"})
    assert not bad, f"library modules importing the CLI or its toolkit: {bad}"


def test_the_walk_sees_a_cycle_and_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle made of a function-level import and a relative import is
    found; a TYPE_CHECKING import is not an edge."""
    pkg = tmp_path / "kmtools"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from kmtools.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import c\n")
    (pkg / "c.py").write_text("from kmtools.a import f\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kmtools.a\n")
    (pkg / "e.py").write_text("import kmtools.d\n")
    edges, _ = import_graph(tmp_path)
    assert cycles(edges) == [{"kmtools.a", "kmtools.sub.b", "kmtools.c"}]
    assert edges["kmtools.d"] == set() and edges["kmtools.e"] == {"kmtools.d"}
    assert "kmtools.sub" in edges["kmtools.a"]  # importing kmtools.sub.b runs kmtools/sub/__init__
