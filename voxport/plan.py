"""`voxport plan`: the recipes as a CI job matrix, so a workflow builds each recipe in its own job.

The matrix is the `{"include": [...]}` shape GitHub Actions takes in `strategy.matrix` via `fromJSON`:
one entry per recipe with the paths and the few fields a job name or an upload step needs. Every
recipe is validated here, before any runner starts, so a typo fails the planning job in seconds
instead of one build job after an hour of the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any

from voxport.errors import BadInput, VoxportError
from voxport.recipe import load_recipe


@dataclass(frozen=True)
class MatrixEntry:
    """One build job: strings only (plus a count), so `${{ matrix.x }}` expands to something useful."""

    recipe: str
    name: str
    out: str
    formats: str
    precisions: str
    artifacts: int


def _posix(path: str | os.PathLike[str]) -> str:
    """The path as the user gave it, with forward slashes: job inputs must not depend on the planner's OS."""
    return PurePath(path).as_posix()


def plan(files: Sequence[str | os.PathLike[str]], out_root: str = "build") -> list[MatrixEntry]:
    """Validate every recipe and return one entry per file, in the order given.

    All invalid recipes are reported together (one line each), and two files naming the same recipe are
    refused: their jobs would write the same `out` directory and upload artifacts under the same name.
    """
    if not files:
        raise BadInput("no recipe files given")
    entries: list[MatrixEntry] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for file in files:
        try:
            recipe = load_recipe(file)
        except VoxportError as exc:
            errors.append(str(exc))
            continue
        where = _posix(file)
        if recipe.name in seen:
            errors.append(f"{where}: recipe name {recipe.name!r} is also used by {seen[recipe.name]}")
            continue
        seen[recipe.name] = where
        entries.append(
            MatrixEntry(
                recipe=where,
                name=recipe.name,
                out=f"{out_root.rstrip('/')}/{recipe.name}",
                formats=",".join(recipe.formats),
                precisions=",".join(recipe.precisions),
                artifacts=len(recipe.formats) * len(recipe.precisions),
            )
        )
    if errors:
        raise BadInput("\n".join(errors))
    return entries


def matrix(entries: Sequence[MatrixEntry]) -> dict[str, Any]:
    """The GitHub Actions matrix document: `{"include": [entry, ...]}`."""
    return {"include": [asdict(e) for e in entries]}
