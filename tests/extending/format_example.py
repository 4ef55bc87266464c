"""A new artifact format in one class: the weights, dequantized, in one numpy `.npz` file.

Subclassing `FormatAdapter` with `name="npz"` registers it: recipes then accept `formats: [npz]`
and an `export.npz:` section (its `Options`), and build, validate, verify and inspect handle it.
Validate measures it by running the family's own torch graphs with the file's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxport.config import Bool, ConfigModel
from voxport.export.registry import ExportContext, ExportEntry, FormatAdapter
from voxport.families.base import FamilyModel
from voxport.io import atomic_path
from voxport.runtime.base import Runner


class NpzOptions(ConfigModel):
    compressed: Bool = True  # zip-deflate the arrays


class NpzFormat(FormatAdapter[NpzOptions, None], name="npz"):
    suffix = ".npz"
    Options = NpzOptions
    tool_packages = ("numpy",)

    def export(self, ctx: ExportContext[NpzOptions], prepared: None) -> ExportEntry:
        qm = ctx.qm
        path = ctx.out / self.name / f"{ctx.name}.{qm.precision}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: w.numpy() for name, w in qm.dequantized().items()}
        save = np.savez_compressed if ctx.options.compressed else np.savez
        with atomic_path(path, keep_suffix=True) as tmp:
            save(tmp, **arrays)
        return ExportEntry(
            format=self.name,
            precision=qm.precision,
            path=ctx.rel(path),
            files={"weights": ctx.rel(path)},
            bits_per_weight=8 * sum(a.nbytes for a in arrays.values()) / sum(a.size for a in arrays.values()),
            skipped_weights=qm.skipped_weights(),
        )

    def runner(self, model: FamilyModel, entry: ExportEntry, out: Path) -> Runner:
        with np.load(out / entry.path) as data:
            weights = {name: torch.from_numpy(data[name]) for name in data.files}
        return model.with_weights(weights).torch_runner()

    def verify_load(self, path: Path) -> None:
        with np.load(path) as data:
            _ = [data[name] for name in data.files]  # reads (and CRC-checks) every array

    def describe(self, path: Path) -> dict[str, Any]:
        with np.load(path) as data:
            return {"tensors": len(data.files), "parameters": sum(data[n].size for n in data.files)}
