"""The shape of the code: rooms that need each other, dependencies, one kernel.

Imports are read as text with the ast module, at module level and inside
functions alike (a lazy import is still a room that needs another), so these
checks need none of emu's own imports to work.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EMU = REPO / "emu"
# import name -> distribution name, where they differ
DIST_OF = {"elftools": "pyelftools"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in EMU.rglob("*.py"):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(path: Path, module: str) -> list[str]:
    """Every module name an import statement in the file names (absolute)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def _edges() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for n in _imports(p, m):
            while n and n not in mods:
                n = n.rpartition(".")[0]
            # a submodule naming its own package's __init__ is not a dependency
            if n and n != m and not (mods[n].name == "__init__.py" and m.startswith(n + ".")):
                edges[m].add(n)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
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
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_emu_modules():
    assert _cycles(_edges()) == []


def test_declared_dependencies_are_exactly_what_emu_imports():
    mods = _modules()
    imported = set()
    stdlib = set(__import__("sys").stdlib_module_names)
    for m, p in mods.items():
        for n in _imports(p, m):
            top = n.partition(".")[0]
            if top and top != "emu" and top not in stdlib:
                imported.add(DIST_OF.get(top, top))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower()
                for d in project["dependencies"]}
    assert imported == declared


def test_one_kernel():
    """Only emu.kernel.Kernel handles faults: no second kernel model in emu/."""
    owners = []
    for m, p in _modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                if methods & {"handle_mm_fault", "_fault", "_resolve", "fault_range"}:
                    owners.append(f"{m}.{node.name}")
    assert owners == ["emu.kernel.memory.FaultMixin"]
