"""No import circles in devpid: every import counts, in a function or under TYPE_CHECKING.

A circle is a sign that two modules each do part of the other's job; the fix is a
module below both (devpid.common) or a Protocol, never a lazier import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

Graph = dict[str, set[str]]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (a directory under ``root``), by dotted name.

    A package's ``__init__`` is a module of its own, named as the package.
    """
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name a (possibly relative) ``from ... import`` starts from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _known(name: str, known: dict[str, Path]) -> str | None:
    """``name`` if it is a module, else the longest module it lies in (``a.b.attr`` -> ``a.b``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``module`` imports, wherever the import statement is."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            # ``from a.b import c``: the module a.b.c if there is one, else a.b itself.
            targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            targets = [t if t in known else base for t in targets]
        for target in targets:
            resolved = _known(target, known)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path, package: str) -> Graph:
    known = modules(root, package)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def _components(graph: Graph) -> Iterator[list[str]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for child in edges:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    yield sorted(component)


def _cycle_through(graph: Graph, members: list[str]) -> list[str]:
    """One shortest circle inside a component, from its first member back to it."""
    inside = set(members)
    start = members[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & inside):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no circle through {start}")  # a component always has one


def cycles(graph: Graph) -> list[list[str]]:
    """One circle per group of modules that import each other, e.g. ``[a, b, a]``."""
    return [_cycle_through(graph, c) for c in _components(graph) if len(c) > 1]


def describe(cycle: list[str], files: dict[str, Path], root: Path) -> str:
    where = ", ".join(str(files[m].relative_to(root)) for m in cycle[:-1])
    return f"{' -> '.join(cycle)}  ({where})"


# -- devpid ------------------------------------------------------------------------


def test_devpid_has_no_import_circles() -> None:
    files = modules(REPO_ROOT, "devpid")
    found = cycles(import_graph(REPO_ROOT, "devpid"))
    assert not found, "import circles:\n" + "\n".join(
        describe(cycle, files, REPO_ROOT) for cycle in found
    )


# -- the checker itself ----------------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_circle_through_type_checking_and_a_function_is_found(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/common.py": "VALUE = 1\n",
            "pkg/a.py": "from pkg import b\nfrom pkg.common import VALUE\n",
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.sub import helper\n"
            ),
            "pkg/sub/__init__.py": "from .helper import run\n",
            "pkg/sub/helper.py": "def run():\n    import pkg.a.thing\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b", "pkg.common"}
    assert graph["pkg.b"] == {"pkg.sub.helper"}
    assert graph["pkg.sub"] == {"pkg.sub.helper"}  # relative, from a package's __init__
    assert graph["pkg.sub.helper"] == {"pkg.a"}  # an attribute of a module is that module
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.helper", "pkg.a"]]
    files = modules(tmp_path, "pkg")
    assert describe(cycles(graph)[0], files, tmp_path) == (
        "pkg.a -> pkg.b -> pkg.sub.helper -> pkg.a  (pkg/a.py, pkg/b.py, pkg/sub/helper.py)"
    )


def test_a_name_from_a_package_is_its_init_and_no_circle_is_none(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import NAME\n",
            "pkg/a.py": "NAME = 1\n",
            "pkg/b.py": "from pkg import NAME\nimport os\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": set(), "pkg.b": {"pkg"}}
    assert cycles(graph) == []
