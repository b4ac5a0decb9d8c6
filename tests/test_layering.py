"""The import graph of qdqtorch: no module imports another that (directly or not) imports it back, and imports point
down the layers of README's architecture diagram. Parsed with ast, so function-local imports count too."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parent.parent / "qdqtorch"

# README's diagram, bottom up; a module may import its own rank and below (siblings share a rank)
RANKS = {
    "tensor_quant": 0, "calib": 0, "descriptor": 0, "host_memory": 0, "user_code": 0, "optional": 0,
    "errors": 0, "atomic": 0, "fieldtypes": 0,
    "nn": 1,
    "quantize": 2, "quant_modules": 2, "": 2,  # "" is qdqtorch/__init__.py, which re-exports the core
    "models": 3, "data": 3, "eval": 3, "export": 3, "rules": 3, "recovery": 3,
    "ptq": 4, "qat": 4,
    "sensitivity": 5,
    "pipeline": 6,
}
# known upward imports, each to be removed by the work named beside it (then delete the entry)
ALLOWED_UPWARD: Dict[Tuple[str, str], str] = {}
CORE = {"tensor_quant", "calib", "descriptor", "nn", "quantize", "host_memory", "quant_modules", "user_code",
        "optional", "errors", "atomic", "fieldtypes", ""}


def _modules() -> Dict[str, Tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _import_nodes(path: Path) -> List[ast.AST]:
    return [n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _imports(name: str, path: Path, is_package: bool, modules: Dict[str, Tuple[Path, bool]]) -> Set[str]:
    """Every qdqtorch module `name` imports anywhere in its body (`scripts...` kept as is, to be refused)."""
    found: Set[str] = set()
    for node in _import_nodes(path):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    edges = set()
    for target in found:
        if target.split(".")[0] not in ("qdqtorch", "scripts"):
            continue
        while target not in modules and "." in target and not target.startswith("scripts"):
            target = target.rsplit(".", 1)[0]  # qdqtorch.x.attr -> qdqtorch.x
        edges.add(target)
        parts = target.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            parent = ".".join(parts[:i])
            if parent in modules and not (name == parent or name.startswith(parent + ".")):
                edges.add(parent)
    edges.discard(name)
    return edges


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(name, path, is_package, modules) for name, (path, is_package) in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_every_layer_has_a_rank() -> None:
    assert {_layer(m) for m in _graph()} <= set(RANKS), "a new qdqtorch package needs its place in RANKS"


def test_no_import_cycle() -> None:
    graph = _graph()
    assert len(graph) > 50 and "qdqtorch.rules.apply" in graph["qdqtorch.rules.placement"]
    assert _cycles(graph) == []


def test_imports_point_down_the_layers() -> None:
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if target.split(".")[0] == "scripts":
                upward.append(f"{module} -> {target} (nothing in qdqtorch imports scripts)")
            elif RANKS[_layer(target)] > RANKS[_layer(module)] and (module, target) not in ALLOWED_UPWARD:
                upward.append(f"{module} -> {target}")
    assert upward == [], "imports that point up the layers:\n" + "\n".join(sorted(upward))


def test_the_core_knows_nothing_of_the_layers_above() -> None:
    core = {m: t for m, t in _graph().items() if _layer(m) in CORE}
    assert "qdqtorch.quantize.replace" in core
    assert {m: sorted(x for x in t if _layer(x) not in CORE) for m, t in core.items() if
            any(_layer(x) not in CORE for x in t)} == {}


def test_no_private_name_is_imported_from_another_package() -> None:
    """`from ..nn.x import _Private` across packages couples them to internals: make the name public or move it."""
    found = []
    for name, (path, is_package) in _modules().items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        for node in _import_nodes(path):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = (package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
                    if node.level else (node.module or "").split("."))
            if base[0] != "qdqtorch" or (len(base) > 1 and len(package) > 1 and base[1] == package[1]):
                continue
            private = [p for p in [*base[1:], *(a.name for a in node.names)] if p.startswith("_")
                       and not p.startswith("__")]
            if private:
                found.append(f"{name}: from {'.'.join(base)} import {private}")
    assert found == []
