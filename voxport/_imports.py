"""voxport's import graph, read from the source (never by importing it).

Two users need the same answer to "what does this code import": the layer test (tests/test_layers.py),
which checks that each layer imports only the layers before it, and the stage cache (`cache.py`), whose
key for a stage hashes exactly the code that stage runs. Both must see every import, including the
ones inside functions (a lazy import is still a dependency), so this walks the AST of the files rather
than `sys.modules` after an import, which would see only what one run happened to touch. Imports under
`if TYPE_CHECKING:` are left out: they never run.

Core layer: this module imports nothing from voxport.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` (both dotted module names) on `line` of the source's file."""

    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root`, by dotted name (a package by its __init__)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def parse(path: Path) -> ast.Module:
    """The AST of a file, parsed once per process per content (an edited file is parsed again)."""
    return _parse(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def _parse(text: str, filename: str) -> ast.Module:
    return ast.parse(text, filename)


def type_checking_only(node: ast.AST, parents: Mapping[ast.AST, ast.AST]) -> bool:
    """Whether `node` sits under an `if TYPE_CHECKING:` (never executed)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    yield origin
    yield from (f"{origin}.{alias.name}" for alias in node.names)


def resolve(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: Mapping[str, Path]
) -> list[str]:
    """The modules of `known` an import statement in `module` loads.

    `from a import b` is an edge to `a.b` when that is a module, else to `a`; a dotted name that is no
    module is resolved to the nearest enclosing module. Names outside `known` are dropped."""
    targets = list(_targets(node, module, is_package))
    if isinstance(node, ast.ImportFrom):
        submodules = [t for t in targets[1:] if t in known]
        named = [t for t in targets[1:] if t not in known]
        targets = submodules + ([targets[0]] if named or not submodules else [])
    found = []
    for target in targets:
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in known and target != module:
            found.append(target)
    return found


def imports_of(module: str, known: Mapping[str, Path]) -> list[tuple[str, int]]:
    """The modules of `known` that `module` imports, each with the line of the import (TYPE_CHECKING
    ones left out)."""
    path = known[module]
    tree = parse(path)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or type_checking_only(node, parents):
            continue
        found += [
            (target, node.lineno) for target in resolve(node, module, path.name == "__init__.py", known)
        ]
    return found


def import_edges(root: Path, package: str) -> list[Edge]:
    """Every import between modules of `package` under `root`, with its line (TYPE_CHECKING ones left
    out), sorted by source, line and target."""
    known = modules(root, package)
    edges = {Edge(name, target, line) for name in known for target, line in imports_of(name, known)}
    return sorted(edges, key=lambda e: (e.source, e.line, e.target))
