"""What the stage cache saves: a cold build, an unchanged rebuild, and a rebuild after one export option
changed, timed in the same run on the same recipe (fresh output and cache directories for the cold run).

    .venv/bin/python benchmarks/bench_cache.py                                   # tiny random VITS
    .venv/bin/python benchmarks/bench_cache.py --recipe recipes/pixel-8.yaml     # a real voice

The "changed" run sets a different GGUF type mix for one precision (or an ONNX opset when the recipe
has no GGUF), so only that artifact's export and validation may recompute.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from voxport import pipeline
from voxport.recipe import Recipe, load_recipe


def _tiny_recipe(root: Path) -> Recipe:
    from voxport.families.vits.synthetic import make_vits_checkpoint

    model = make_vits_checkpoint(root / "tiny", seed=0)
    return Recipe.from_mapping(
        {
            "name": "tiny",
            "model": str(model),
            "formats": ["onnx", "gguf"],
            "precisions": ["fp32", "int8", "int4"],
            "validate": {"texts": ["hello world, this is voxport.", "small models can still sound big."]},
        },
        model,
    )


def _changed(recipe: Recipe) -> Recipe:
    data = copy.deepcopy(recipe.model_dump(mode="json", by_alias=True, exclude_none=True))
    if "gguf" in recipe.formats:
        precision = recipe.precisions[-1]
        data["export"]["gguf"]["types"] = {precision: {"*": "Q5_0"}}
    else:
        data["export"]["onnx"]["opset"] = 20 if recipe.export.onnx.opset != 20 else 21
    base = recipe.source_path.parent if recipe.source_path else Path(recipe.model).parent
    return Recipe.from_mapping(data, base)


def _timed(recipe: Recipe, out: Path, cache: Path) -> tuple[float, int]:
    """Seconds for one build, and how many units it restored from the cache."""
    lines: list[str] = []
    started = time.perf_counter()
    pipeline.build(recipe, out, lines.append, cache_dir=cache)
    return time.perf_counter() - started, sum(line.endswith(": cached") for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, help="recipe to build (default: a tiny random VITS)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = load_recipe(args.recipe) if args.recipe else _tiny_recipe(root)
        out, cache = root / "out", root / "cache"
        cold, _ = _timed(recipe, out, cache)
        again, hits = _timed(recipe, out, cache)
        changed, hits_changed = _timed(_changed(recipe), out, cache)
    print(f"recipe {recipe.name}: {len(recipe.formats)} formats × {len(recipe.precisions)} precisions")
    print(f"{'build':<34}{'seconds':>9}{'vs cold':>9}{'units restored':>16}")
    print(f"{'cold (empty cache)':<34}{cold:>9.1f}{1.0:>9.2f}{0:>16}")
    print(f"{'unchanged rebuild':<34}{again:>9.1f}{again / cold:>9.2f}{hits:>16}")
    print(f"{'one export option changed':<34}{changed:>9.1f}{changed / cold:>9.2f}{hits_changed:>16}")


if __name__ == "__main__":
    main()
