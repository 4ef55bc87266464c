"""``mse``: per block, the clipped scale with the least squared weight error.

Clipping the largest values of a block lets every other value use a finer step; which factor is best
depends on the block, so each block tries a grid of factors and keeps the best. The rtn scale (factor 1)
is always the starting candidate and is replaced only by a strictly better one, which is what
guarantees mse never does worse than rtn on any block (ties, all-zero blocks included, keep rtn).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field, Strict

from voxport.quantize.methods.base import MethodOptions, QuantMethod
from voxport.quantize.methods.blocks import Blocks, absmax_scale, block_sq_error, encode, stored_scale
from voxport.quantize.precisions import PrecisionSpec
from voxport.quantize.tensor import QuantizedTensor


class MseOptions(MethodOptions):
    min_factor: Annotated[
        float,
        Field(
            gt=0,
            lt=1,
            allow_inf_nan=False,
            description="smallest clipping factor tried, relative to the rtn scale",
        ),
    ] = 0.5
    steps: Annotated[
        int,
        Strict(),
        Field(ge=1, le=256, description="clipping factors tried between min_factor and 1 (1 excluded)"),
    ] = 32

    def factors(self) -> np.ndarray:
        """The grid: `steps` factors evenly spaced from `min_factor` up to (not including) 1."""
        return np.linspace(self.min_factor, 1.0, self.steps + 1, dtype=np.float64)[:-1]


class Mse(QuantMethod, name="mse"):
    """Search clipping factors of the rtn scale per block; keep the one with the least squared error."""

    Options = MseOptions
    options: MseOptions

    def quantize_weight(
        self, name: str, weight: np.ndarray, spec: PrecisionSpec, block_size: int
    ) -> QuantizedTensor:
        blocks = Blocks.of(weight, spec, block_size)
        values, bits = blocks.values, spec.bits
        raw = absmax_scale(values, bits)
        scale = stored_scale(raw, spec)
        codes = encode(values, scale, bits)
        best_err = block_sq_error(values, codes, scale)
        # vectorised over all blocks at once; only the candidate grid is a Python loop
        for factor in self.options.factors():
            cand_scale = stored_scale((raw * np.float32(factor)).astype(np.float32), spec)
            cand_codes = encode(values, cand_scale, bits)
            err = block_sq_error(values, cand_codes, cand_scale)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            scale = np.where(better, cand_scale, scale)
            codes = np.where(better, cand_codes, codes)
        return blocks.pack(codes, scale, self.name)
