"""A calibrated quantization method added from outside voxport, by subclassing: ``absmax-act``.

This file is the worked example of extending voxport with a method (docs and tests/test_quantize_methods.py
use it). Importing it registers ``absmax-act``; from then on ``quantize.method: absmax-act`` validates
in a recipe, its options are checked by `AbsmaxActOptions`, and `quantize_model` runs it like a built-in.

The idea is AWQ's: columns of a weight that meet large activations matter more, because an error in
them is multiplied by those activations. AWQ scales such columns up before rounding and folds the
inverse scale into the previous layer; a voxport method only chooses codes and scales inside the
stored encoding, so this toy applies the same per-column importance where it can: each block's scale
is the clipping of the rtn scale that minimises the *activation-weighted* squared error
``sum_j s_j (w_j - q_j)^2`` with ``s_j = (max |x_j|)^alpha`` from the calibration run. The rtn scale is
always a candidate and only a strictly better one replaces it, so on its own objective it never does
worse than rtn. Weights without recorded columns (a transposed convolution reduces over rows) keep
the rtn scale.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated

import numpy as np
from pydantic import Field, Strict

from voxport.families.base import CalibrationSet, FamilyModel
from voxport.quantize.methods import Blocks, MethodOptions, QuantMethod, absmax_scale, encode, stored_scale
from voxport.quantize.precisions import PrecisionSpec
from voxport.quantize.tensor import QuantizedTensor


class AbsmaxActOptions(MethodOptions):
    alpha: Annotated[
        float,
        Field(ge=0, le=4, allow_inf_nan=False, description="exponent on each column's activation absmax"),
    ] = 1.0
    min_factor: Annotated[
        float, Field(gt=0, lt=1, allow_inf_nan=False, description="smallest clipping factor tried")
    ] = 0.5
    steps: Annotated[int, Strict(), Field(ge=1, le=256, description="clipping factors tried below 1")] = 16


class AbsmaxAct(QuantMethod, name="absmax-act"):
    """Per block, the clipped rtn scale with the least activation-weighted squared error."""

    Options = AbsmaxActOptions
    options: AbsmaxActOptions
    calibrated = True

    def __init__(self, options: AbsmaxActOptions | dict[str, object] | None = None) -> None:
        super().__init__(options)
        #: per weight, one non-negative importance per column of its 2-D view
        self.importance: dict[str, np.ndarray] = {}

    def calibrate(self, model: FamilyModel, batch: CalibrationSet, names: Collection[str]) -> None:
        todo = [n for n in names if n not in self.importance]
        for inputs in model.calibration_inputs(batch, todo):
            if inputs.reduction_axis == 1:
                absmax = np.abs(inputs.x).max(axis=0).astype(np.float64)
                self.importance[inputs.name] = absmax**self.options.alpha

    def quantize_weight(
        self, name: str, weight: np.ndarray, spec: PrecisionSpec, block_size: int
    ) -> QuantizedTensor:
        blocks = Blocks.of(weight, spec, block_size)
        values, bits = blocks.values, spec.bits
        raw = absmax_scale(values, bits)
        scale = stored_scale(raw, spec)
        codes = encode(values, scale, bits)
        importance = self.importance.get(name)
        if importance is None:
            return blocks.pack(codes, scale, self.name)
        weights = _in_blocks(importance, values.shape[1], values.shape[2])
        best = _weighted_error(values, codes, scale, weights)
        for factor in np.linspace(self.options.min_factor, 1.0, self.options.steps + 1)[:-1]:
            cand_scale = stored_scale((raw * np.float32(factor)).astype(np.float32), spec)
            cand_codes = encode(values, cand_scale, bits)
            err = _weighted_error(values, cand_codes, cand_scale, weights)
            better = err < best
            best = np.where(better, err, best)
            scale = np.where(better, cand_scale, scale)
            codes = np.where(better, cand_codes, codes)
        return blocks.pack(codes, scale, self.name)


def _in_blocks(per_column: np.ndarray, n_blocks: int, size: int) -> np.ndarray:
    """Per-column values laid out like `Blocks.values` of one row: (1, n_blocks, size), zero padded."""
    padded = np.zeros(n_blocks * size, dtype=np.float64)
    padded[: per_column.size] = per_column
    return padded.reshape(1, n_blocks, size)


def _weighted_error(
    values: np.ndarray, codes: np.ndarray, scale: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    diff = values.astype(np.float64) - (codes.astype(np.float32) * scale).astype(np.float64)
    error: np.ndarray = np.einsum("rbk,rbk,xbk->rb", diff, diff, weights)
    return error[..., None]
