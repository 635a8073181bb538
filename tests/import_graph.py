"""The project's static import graph, read with ``ast`` (nothing is imported or run).

Every ``import`` and ``from ... import`` counts, wherever it stands: at the top of a module, in a
function (a deferred import is still a dependency, and still closes a cycle the moment it runs)
or under ``if TYPE_CHECKING:`` (a type from another layer is a dependency of the design).
An edge goes to the most specific project module an import names: ``from pipelines import graph``
is an edge to ``pipelines.graph``; ``from models.registry import Registry`` to ``models.registry``.
Imports of anything outside the project keep their top-level name (``boto3``, ``sagemaker``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("models", "evaluation", "steps", "pipelines", "serving")


@dataclass(frozen=True)
class Import:
    importer: str   # dotted module name
    imported: str   # a project module, or the top-level name of a third-party package
    line: int
    external: bool


def project_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted name -> file of every module under ``packages`` (a package is its ``__init__``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a project module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports(root: Path, packages: Iterable[str] = PACKAGES) -> list[Import]:
    modules = project_modules(root, packages)
    found: list[Import] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importer's package
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from package import module` names the module; `from module import name`, the module.
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for name in names:
                target = _resolve(name, modules)
                if target is None:
                    found.append(Import(module, name.split(".")[0], node.lineno, external=True))
                elif target != module:
                    found.append(Import(module, target, node.lineno, external=False))
    return found


def graph(found: Iterable[Import]) -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    edges: dict[str, set[str]] = {}
    for edge in found:
        if not edge.external:
            edges.setdefault(edge.importer, set()).add(edge.imported)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) for every strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(edges.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_cycle_in(group, edges) for group in groups]


def _cycle_in(group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the group's first module (breadth-first back to it)."""
    start = min(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges.get(node, set()) & group):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{sorted(group)} is strongly connected but has no cycle through {start}")
