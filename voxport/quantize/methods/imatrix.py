"""``imatrix``: importance-weighted scale choice, in the spirit of llama.cpp's importance matrix.

An error in column j of a weight reaches the layer's output multiplied by that column's input, so its
cost is about ``E[x_j²] (w_j - q_j)²`` (the diagonal of GPTQ's Hessian). llama.cpp records ``mean(x²)``
per column (``llama-imatrix``) and picks each block's scale to minimise that weighted error; this does
the same inside voxport's stored encodings: per block, the rtn scale, a grid of scaled versions of it
(``min_factor`` .. ``max_factor``), and for each the weighted least-squares scale of the codes it gave
(``Σ iwq / Σ iq²``, llama.cpp's refinement), keeping whichever has the least weighted error. rtn's
scale is the first candidate and only a strictly better one replaces it, so on the weighted error no
block is worse than rtn. Codes are always `blocks.encode` at a `stored_scale`: formats decode them as
they decode rtn's.

ConvTranspose1d (reduction over rows) has one importance per row; within a block (part of one row)
it is constant, so those blocks get the plain least-squared-error choice. Weights without recorded
inputs use uniform importance (the same search unweighted), and `fallback` names them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import Field, Strict

from voxport.quantize.methods.base import MethodOptions, RecordingMethod, weight_delta
from voxport.quantize.methods.blocks import (
    Blocks,
    absmax_scale,
    encode,
    stored_scale,
    weighted_sq_error,
)
from voxport.quantize.precisions import PrecisionSpec
from voxport.quantize.tensor import QuantizedTensor

if TYPE_CHECKING:
    from voxport.families.base import WeightInputs

log = logging.getLogger(__name__)


class ImatrixOptions(MethodOptions):
    min_factor: Annotated[
        float,
        Field(gt=0, lt=1, allow_inf_nan=False, description="smallest factor of the rtn scale tried"),
    ] = 0.5
    max_factor: Annotated[
        float,
        Field(ge=1, le=2, allow_inf_nan=False, description="largest factor of the rtn scale tried"),
    ] = 1.0
    steps: Annotated[
        int,
        Strict(),
        Field(ge=1, le=256, description="factors tried between min_factor and max_factor (1 excluded)"),
    ] = 32
    refine: Annotated[
        bool,
        Field(description="also try each candidate's weighted least-squares scale for its codes"),
    ] = True

    def factors(self) -> np.ndarray:
        """`steps` factors from `min_factor` to `max_factor`, 1 (rtn, always tried first) left out."""
        grid = np.linspace(self.min_factor, self.max_factor, self.steps + 1, dtype=np.float64)
        return grid[grid != 1.0]


class Imatrix(RecordingMethod, name="imatrix"):
    """Per block, the scale with the least importance-weighted squared error (importance: mean x²)."""

    Options = ImatrixOptions
    options: ImatrixOptions

    def __init__(self, options: ImatrixOptions | dict[str, object] | None = None) -> None:
        super().__init__(options)
        #: per weight: mean(x²) per entry of its reduction axis, and that axis
        self.importance: dict[str, tuple[np.ndarray, int]] = {}

    def take(self, inputs: WeightInputs) -> None:
        x = inputs.x.astype(np.float64)
        self.importance[inputs.name] = (np.mean(x * x, axis=0), inputs.reduction_axis)

    def error(self, name: str, weight: np.ndarray, quantized: QuantizedTensor) -> float:
        """The importance-weighted squared error (what imatrix minimises); plain squared error when
        nothing was recorded for `name`."""
        recorded = self.importance.get(name)
        if recorded is None:
            return super().error(name, weight, quantized)
        per, axis = recorded
        delta = weight_delta(weight, quantized)
        importance = per[:, None] if axis == 0 else per[None, :]
        return float(np.sum(importance * delta * delta))

    def block_weights(self, name: str, blocks: Blocks) -> np.ndarray | None:
        """The importance of each element of `blocks.values`, broadcastable to it (None: uniform)."""
        recorded = self.importance.get(name)
        if recorded is None:
            return None
        per, axis = recorded
        rows, n_blocks, size = blocks.values.shape
        if axis == 0:
            if per.shape != (rows,):
                raise ValueError(f"{name}: {per.size} row importances for a view of {rows} rows")
            return per.reshape(rows, 1, 1)
        if per.shape != (blocks.cols,):
            raise ValueError(f"{name}: {per.size} column importances for a view of {blocks.cols} columns")
        padded = np.zeros(n_blocks * size, dtype=np.float64)
        padded[: blocks.cols] = per
        return padded.reshape(1, n_blocks, size)

    def quantize_weight(
        self, name: str, weight: np.ndarray, spec: PrecisionSpec, block_size: int
    ) -> QuantizedTensor:
        blocks = Blocks.of(weight, spec, block_size)
        weights = self.block_weights(name, blocks)
        if weights is None:
            log.info("imatrix: %s has %s; searched with uniform importance", name, self.uncalibrated(name))
        codes, scale = weighted_scale_search(
            blocks.values, spec, self.options.factors(), weights, refine=self.options.refine
        )
        return blocks.pack(codes, scale, self.name)


def weighted_scale_search(
    values: np.ndarray,
    bits: int | PrecisionSpec,
    factors: np.ndarray,
    weights: np.ndarray | None,
    *,
    refine: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes and stored scales ``(rows, n_blocks, 1)`` of `values` ``(rows, n_blocks, size)``: the
    candidate with the least weighted squared error, rtn's scale first and replaced only when strictly
    beaten. Candidates: rtn's scale times each factor, and (`refine`) for each of those the scale that
    minimises the weighted error of the codes it produced (then re-encoded at that scale)."""
    raw = absmax_scale(values, bits)
    scale = stored_scale(raw, bits)
    codes = encode(values, scale, bits)
    best = weighted_sq_error(values, codes, scale, weights)
    w = np.ones_like(values, dtype=np.float64) if weights is None else np.broadcast_to(weights, values.shape)
    x = values.astype(np.float64)

    def consider(cand_scale: np.ndarray) -> None:
        nonlocal best, scale, codes
        cand_codes = encode(values, cand_scale, bits)
        err = weighted_sq_error(values, cand_codes, cand_scale, weights)
        better = err < best
        best = np.where(better, err, best)
        scale = np.where(better, cand_scale, scale)
        codes = np.where(better, cand_codes, codes)

    candidates = [stored_scale((raw * np.float32(f)).astype(np.float32), bits) for f in factors]
    for k, cand in enumerate([scale, *candidates]):
        if k:  # k == 0 is rtn's scale, already the incumbent
            consider(cand)
        if refine:
            q = encode(values, cand, bits).astype(np.float64)
            num = (w * x * q).sum(axis=-1, keepdims=True)
            den = (w * q * q).sum(axis=-1, keepdims=True)
            ls = np.divide(num, den, out=np.zeros_like(num), where=den > 0).astype(np.float32)
            ls = np.where(den > 0, ls, cand)
            consider(_in_fp16_range(ls, bits))
    return codes, scale


def _in_fp16_range(scale: np.ndarray, bits: int | PrecisionSpec) -> np.ndarray:
    """`stored_scale` of a refined candidate, clipped to what float16 holds (a refined scale can only
    grow past the rtn one by a little, but `stored_scale` refuses any beyond float16)."""
    limit = np.float32(np.finfo(np.float16).max)
    return stored_scale(np.clip(scale, -limit, limit).astype(np.float32), bits)
