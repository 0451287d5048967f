"""The package's layers, held: every import of every module (lazy ones inside functions
and type-only ones included) read from the source, so a new violation fails here.

    objects, errors, defaults     value types: import nothing of pask but each other
    forked, atomic_file           helpers of every layer: import nothing of pask at all
    backend/                      the kernel: only value types (and each other)
    core (the pipeline steps, fastpath/, render/, state, ...)
                                  no cli, no health daemon; never pyroute2 or nftables
    render/                       no backend
    health/                       the daemon: core and backends, never cli
    cli/                          the shells: anything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pask_ipvs"
KERNEL_LIBRARIES = ("pyroute2", "nftables")
VALUE_TYPES = {"pask_ipvs", "pask_ipvs.objects", "pask_ipvs.errors", "pask_ipvs.defaults"}
LEAVES = {"pask_ipvs.forked", "pask_ipvs.atomic_file"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute names (``from . import x`` counts as the
    module x when x is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            for a in node.names:         # from pkg import module
                if (PACKAGE.parent / (target.replace(".", "/") + f"/{a.name}.py")).exists() or \
                        (PACKAGE.parent / (target.replace(".", "/") + f"/{a.name}/__init__.py")).exists():
                    out.add(f"{target}.{a.name}")
    return out


GRAPH: dict[str, set[str]] = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def own(deps: set[str]) -> set[str]:
    return {d for d in deps if d == "pask_ipvs" or d.startswith("pask_ipvs.")}


def layer(mod: str) -> str:
    if mod in VALUE_TYPES:
        return "values"
    if mod in LEAVES:
        return "leaf"
    for top in ("backend", "render", "health", "cli", "fastpath"):
        if mod == f"pask_ipvs.{top}" or mod.startswith(f"pask_ipvs.{top}."):
            return top
    return "core"


def closure(mod: str) -> set[str]:
    seen, todo = set(), [mod]
    while todo:
        m = todo.pop()
        for d in own(GRAPH.get(m, set())):
            if d in GRAPH and d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_the_graph_is_read():
    """The test itself: it sees the modules and their imports (lazy ones too)."""
    assert {"pask_ipvs.pipeline", "pask_ipvs.backend.ipvs", "pask_ipvs.cli.apply"} <= GRAPH.keys()
    assert "pask_ipvs.fastpath.noop" in own(GRAPH["pask_ipvs.pipeline"])      # a lazy import
    assert "pyroute2" in GRAPH["pask_ipvs.backend.realserver_host"]


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import, lazy ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(own(GRAPH[v]) & GRAPH.keys()):
            if w == v or w == "pask_ipvs":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


ALLOWED = {   # layer -> the layers its modules may import
    "leaf": set(),
    "values": {"values"},
    "backend": {"values", "leaf", "backend"},
    "render": {"values", "leaf", "core", "render"},
    "core": {"values", "leaf", "backend", "core", "render", "fastpath"},
    "fastpath": {"values", "leaf", "backend", "core", "render", "fastpath"},
    "health": {"values", "leaf", "backend", "core", "render", "fastpath", "health"},
    "cli": {"values", "leaf", "backend", "core", "render", "fastpath", "health", "cli"},
}


@pytest.mark.parametrize("mod", sorted(GRAPH))
def test_each_module_imports_only_its_layers(mod):
    deps = own(GRAPH[mod]) if layer(mod) == "leaf" else own(GRAPH[mod]) - {"pask_ipvs"}
    wrong = sorted(d for d in deps if layer(d) not in ALLOWED[layer(mod)])
    assert wrong == [], f"{mod} ({layer(mod)}) imports {wrong}"


def test_backends_import_no_plan_and_no_face_level_module():
    """The kernel side knows value types only: ops reach it as duck-typed values."""
    for mod, deps in GRAPH.items():
        if layer(mod) == "backend":
            assert own(deps) - {"pask_ipvs"} <= VALUE_TYPES | LEAVES | \
                {d for d in deps if layer(d) == "backend"}, mod


@pytest.mark.parametrize("mod", sorted(m for m in GRAPH if layer(m) not in ("backend", "cli", "health")))
def test_core_never_reaches_pyroute2_or_nftables(mod):
    """Not directly, and not through any pask module it imports (the backends that use
    them are given to the core, never imported by it)."""
    reached = {m for m in closure(mod) | {mod}
               if any(d.split(".")[0] in KERNEL_LIBRARIES for d in GRAPH.get(m, ()))}
    assert reached == set(), f"{mod} reaches pyroute2/nftables through {sorted(reached)}"
