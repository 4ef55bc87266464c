"""The torch runner: a family's own graph modules in eager torch (the fp32 reference)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from voxport.runtime.base import TorchGraph


class TorchRunner:
    """Runs the family's own graph modules in eager torch (the reference)."""

    name = "torch"

    def __init__(self, graphs: Sequence[TorchGraph]) -> None:
        self.graphs = {g.name: g for g in graphs}

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.graphs[graph]
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in spec.input_names if n in inputs]
        with torch.no_grad():
            out = spec.module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return {n: o.detach().numpy() for n, o in zip(spec.output_names, outs, strict=True)}
