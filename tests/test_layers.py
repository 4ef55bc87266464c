"""voxport's layer order, checked on the source: each layer imports only the layers before it.

    core (errors, io, progress, pieces, lock, config) → runtime → families → quantize → export → validate
        → pipeline (recipe, cache, manifest, plan, pipeline) → cli/api (cli, api, say, inspect, verify)

Every `import` counts, including the ones inside functions (a lazy import is still a dependency); only
imports under `if TYPE_CHECKING:` are left out, since they never run. An import of a later layer, and an
import cycle, fail unless the edge is in KNOWN_BACK_EDGES, which lists what is still to be removed and
may only shrink: an entry that no longer occurs fails too, so whoever removes an edge deletes its entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from voxport import _imports
from voxport._imports import Edge

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "voxport"

#: Layers in import order. A key names a module or a package; a package covers every module under it,
#: and the longest matching key wins. A module no key covers fails `test_every_module_has_a_layer`.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "core",
        (
            "voxport",
            "voxport.errors",
            "voxport.io",
            "voxport.progress",
            "voxport.pieces",
            "voxport.lock",
            "voxport.config",
        ),
    ),
    ("runtime", ("voxport.runtime",)),
    ("families", ("voxport.families",)),
    ("quantize", ("voxport.quantize",)),
    ("export", ("voxport.export",)),
    ("validate", ("voxport.validate",)),
    (
        "pipeline",
        ("voxport.recipe", "voxport.cache", "voxport.manifest", "voxport.plan", "voxport.pipeline"),
    ),
    (
        "cli",
        (
            "voxport.cli",
            "voxport.__main__",
            "voxport.api",
            "voxport.say",
            "voxport.inspect",
            "voxport.verify",
        ),
    ),
)

#: Imports that break the order or close a cycle today, as (importer, imported) module pairs; each with
#: why it is still here and the work that removes it (issue 13's work packages, see its plan).
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}


#: Sibling packages that stay independent of each other: one family never imports another, nor one
#: format adapter another (shared code goes down a layer, e.g. families/layouts/).
SIBLINGS: tuple[tuple[str, ...], ...] = (
    ("voxport.families.vits", "voxport.families.pocket_tts"),
    ("voxport.export.onnx", "voxport.export.gguf", "voxport.export.coreml"),
)


def modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    return _imports.modules(root, package)


def import_edges(root: Path, package: str = PACKAGE) -> list[Edge]:
    """Every import between modules of `package` (the walker the stage cache uses too)."""
    return _imports.import_edges(root, package)


def layer_of(module: str, layers: Iterable[tuple[str, tuple[str, ...]]] = LAYERS) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching key, layer index)
    for index, (_, keys) in enumerate(layers):
        for key in keys:
            if (module == key or module.startswith(key + ".")) and (best is None or len(key) > best[0]):
                best = (len(key), index)
    return None if best is None else best[1]


def back_edges(edges: Iterable[Edge], layers: Iterable[tuple[str, tuple[str, ...]]] = LAYERS) -> list[Edge]:
    """Imports of a later layer than the importer's own."""
    layers = tuple(layers)
    return [
        e
        for e in edges
        if (s := layer_of(e.source, layers)) is not None
        and (t := layer_of(e.target, layers)) is not None
        and t > s
    ]


def sibling_edges(edges: Iterable[Edge], siblings: Iterable[tuple[str, ...]] = SIBLINGS) -> list[Edge]:
    """Imports from one package of a sibling group into another of the same group."""

    def member(module: str, group: tuple[str, ...]) -> str | None:
        return next((p for p in group if module == p or module.startswith(p + ".")), None)

    found = []
    for e in edges:
        for group in siblings:
            source, target = member(e.source, group), member(e.target, group)
            if source and target and source != target:
                found.append(e)
    return found


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def violations(
    root: Path,
    package: str = PACKAGE,
    layers: Iterable[tuple[str, tuple[str, ...]]] = LAYERS,
    known: Mapping[tuple[str, str], str] | None = None,
    siblings: Iterable[tuple[str, ...]] = (),
) -> list[str]:
    """One line per back edge, sibling import or cycle that `known` does not excuse."""
    known = {} if known is None else known
    layers = tuple(layers)
    edges = [e for e in import_edges(root, package) if (e.source, e.target) not in known]
    found = [f"back edge: {e}" for e in back_edges(edges, layers)]
    found += [f"sibling import: {e}" for e in sibling_edges(edges, siblings)]
    found += [f"import cycle: {' ↔ '.join(c)}" for c in cycles(edges)]
    return found


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges(ROOT)


def test_every_module_has_a_layer() -> None:
    unmapped = [m for m in modules(ROOT) if layer_of(m) is None]
    assert not unmapped, f"give these modules a layer in LAYERS: {unmapped}"


def test_no_import_goes_to_a_later_layer(edges: list[Edge]) -> None:
    found = [str(e) for e in back_edges(edges) if (e.source, e.target) not in KNOWN_BACK_EDGES]
    hint = "imports of a later layer (move the code down, or invert the dependency):\n"
    assert not found, hint + "\n".join(found)


def test_sibling_packages_stay_independent(edges: list[Edge]) -> None:
    found = [str(e) for e in sibling_edges(edges) if (e.source, e.target) not in KNOWN_BACK_EDGES]
    assert not found, "imports between sibling packages:\n" + "\n".join(found)


def test_no_import_cycle(edges: list[Edge]) -> None:
    kept = [e for e in edges if (e.source, e.target) not in KNOWN_BACK_EDGES]
    assert cycles(kept) == []


def test_known_back_edges_only_shrink(edges: list[Edge]) -> None:
    """Every excused edge still occurs: once one is gone, its entry must go too."""
    present = {(e.source, e.target) for e in edges}
    gone = sorted(set(KNOWN_BACK_EDGES) - present)
    assert not gone, f"these imports no longer occur; delete them from KNOWN_BACK_EDGES: {gone}"


def test_known_back_edges_are_needed(edges: list[Edge]) -> None:
    """An entry excuses a back edge or an edge of a cycle, never an import that is fine anyway."""
    back = {(e.source, e.target) for e in [*back_edges(edges), *sibling_edges(edges)]}
    in_cycles = {
        (e.source, e.target)
        for e in edges
        for component in cycles(edges)
        if e.source in component and e.target in component
    }
    needless = sorted(set(KNOWN_BACK_EDGES) - back - in_cycles)
    assert not needless, f"not a back edge nor in a cycle; delete from KNOWN_BACK_EDGES: {needless}"


def test_checker_reports_a_back_edge_and_a_cycle(tmp_path: Path) -> None:
    """Canary: on a two-module tree the checker finds the back edge (inside a function, too), the cycle
    it closes, and ignores imports under TYPE_CHECKING."""
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from toy.high import Thing\n"
        "def f():\n"
        "    from toy import high\n"
        "    return high\n"
    )
    (pkg / "high.py").write_text("from .low import f\nclass Thing: ...\n")
    layers = (("low", ("toy", "toy.low")), ("high", ("toy.high",)))

    assert [str(e) for e in import_edges(tmp_path, "toy")] == [
        "toy.high:1 imports toy.low",
        "toy.low:5 imports toy.high",
    ]
    assert violations(tmp_path, "toy", layers) == [
        "back edge: toy.low:5 imports toy.high",
        "import cycle: toy.high ↔ toy.low",
    ]
    assert violations(tmp_path, "toy", layers, {("toy.low", "toy.high"): "excused"}) == []


def test_checker_reports_a_sibling_import(tmp_path: Path) -> None:
    for name in ("toy", "toy/a", "toy/b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "toy/a/x.py").write_text("import toy.b.y\n")
    (tmp_path / "toy/b/y.py").write_text("")
    layers = (("all", ("toy",)),)
    assert violations(tmp_path, "toy", layers) == []
    assert violations(tmp_path, "toy", layers, siblings=[("toy.a", "toy.b")]) == [
        "sibling import: toy.a.x:1 imports toy.b.y"
    ]
