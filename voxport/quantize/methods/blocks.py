"""The block arithmetic every quantization method shares, in plain numpy.

A method's job is to choose scales (and, for calibrated methods, codes); *encoding* a block with a
scale is fixed, because it must match what each format decodes. The arithmetic deliberately mirrors
gguf-py's ``quants.py`` (multiply by a float32 reciprocal scale, GGML's rounding rules) so that the same
codes can be written as GGUF ``Q4_0`` blocks, ONNX ``DequantizeLinear`` initializers or Core ML
blockwise constants, and dequantize identically in each.

Every weight is viewed as 2-D, ``(shape[0], prod(shape[1:]))``; blocks run along axis 1 of that view
(see ``tensor.py``). A blocked precision (int4) has ``block_size`` elements per block; int8 has one
block per row (per-channel). When ``cols`` is not a multiple of ``block_size`` the last block of each
row is partial: it is quantized as if zero-padded to a full block, and the padding is dropped, so
``n_blocks = ceil(cols / block_size)`` and ``QuantizedTensor.dequantize`` (which truncates the repeated
scales to ``cols``) reads it back correctly. Formats that need whole blocks (GGUF) must reject or
re-block such tensors; the plan never sends a tensor with ``cols < block_size`` to int4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxport.quantize.precisions import PrecisionSpec
from voxport.quantize.tensor import QuantizedTensor

_FP16_MAX = float(np.finfo(np.float16).max)

#: the integer bit widths whose encodings are defined here (and in every format adapter)
CODE_BITS = (4, 8)


@dataclass(frozen=True)
class Blocks:
    """A weight cut into blocks: ``values`` is float32 ``(rows, n_blocks, block_size)``, the partial last
    block zero-padded (zeros never change a block's absmax and always encode to code 0, so they cannot
    influence scale choice or error)."""

    values: np.ndarray
    cols: int
    block_size: int
    bits: int
    shape: tuple[int, ...]

    @classmethod
    def of(cls, weight: np.ndarray, spec: PrecisionSpec, block_size: int) -> Blocks:
        """`weight` in the blocks `spec` stores it in: `block_size` long if the precision is blocked,
        else one block per row. ValueError for what cannot be quantized meaningfully."""
        if spec.bits not in CODE_BITS or not spec.integer:
            raise ValueError(f"{spec.name} is not an integer precision with codes of {CODE_BITS} bits")
        if spec.blocked and (
            not isinstance(block_size, int | np.integer) or isinstance(block_size, bool) or block_size < 1
        ):
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        w2 = _as_2d(weight)
        rows, cols = w2.shape
        size = int(block_size) if spec.blocked else cols
        return cls(_to_blocks(w2, size), cols, size, spec.bits, tuple(np.shape(weight)))

    def pack(self, codes: np.ndarray, scale: np.ndarray, method: str) -> QuantizedTensor:
        """The `QuantizedTensor` for codes ``(rows, n_blocks, block_size)`` and scales ``(rows, n_blocks,
        1)``, padding dropped."""
        rows = codes.shape[0]
        return QuantizedTensor(
            codes=np.ascontiguousarray(codes.reshape(rows, -1)[:, : self.cols]),
            scales=np.ascontiguousarray(scale.reshape(rows, -1).astype(np.float32)),
            offsets=None,
            bits=self.bits,
            block_size=self.block_size,
            shape=self.shape,
            method=method,
        )


def _as_2d(weight: np.ndarray) -> np.ndarray:
    """float32 ``(rows, cols)`` view; rejects inputs whose quantization would be meaningless."""
    weight = np.asarray(weight)
    if weight.ndim < 2:
        raise ValueError(
            f"only weights with >= 2 dimensions are quantized (got shape {weight.shape}); "
            "biases and norms stay in floating point"
        )
    if weight.size == 0:
        raise ValueError(f"cannot quantize an empty weight of shape {weight.shape}")
    w2 = weight.astype(np.float32, copy=False).reshape(weight.shape[0], -1)
    if not np.isfinite(w2).all():
        raise ValueError(f"weight of shape {weight.shape} contains NaN or infinity; refusing to quantize")
    return w2


def _to_blocks(w2: np.ndarray, block_size: int) -> np.ndarray:
    rows, cols = w2.shape
    n_blocks = -(-cols // block_size)
    pad = n_blocks * block_size - cols
    if pad:
        w2 = np.pad(w2, ((0, 0), (0, pad)))
    return w2.reshape(rows, n_blocks, block_size)


def _reciprocal(scale: np.ndarray) -> np.ndarray:
    """1/scale in float32, 0 where the scale is 0, so all-zero blocks encode to codes 0 without NaN."""
    inv = np.zeros_like(scale, dtype=np.float32)
    np.divide(np.float32(1), scale, out=inv, where=scale != 0)
    return inv


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C ``roundf`` (half away from zero), written like gguf-py's ``np_roundf`` to avoid the
    ``x + 0.5`` rounding error near .5 boundaries; ggml's Q8_0 reference rounds this way."""
    a = np.abs(x)
    floored = np.floor(a)
    return np.sign(x) * (floored + np.floor(2 * (a - floored)))


def encode(blocks: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """int8 codes of `blocks` at `scale` (broadcast over the last axis), as every format decodes them.

    8 bits: round half away from zero, clipped to [-127, 127] (-128 unused, so the encoding stays
    sign-symmetric like ONNX/Core ML per-channel int8 expect). 4 bits: exactly gguf-py's Q4_0,
    trunc(x * (1/d) + 8.5) in float32, clipped to [0, 15], minus the offset 8; adding 8.5 (not 0.5)
    matters, it is where float32 rounding happens in the reference."""
    if bits == 8:
        q = _round_half_away(blocks * _reciprocal(scale))
        return np.clip(q, -127, 127).astype(np.int8)
    if bits == 4:
        q = np.floor(blocks * _reciprocal(scale) + np.float32(8.5))
        return (np.clip(q, 0, 15) - 8).astype(np.int8)
    raise ValueError(f"no encoding for {bits}-bit codes (defined: {CODE_BITS})")


def absmax_scale(blocks: np.ndarray, bits: int) -> np.ndarray:
    """The round-to-nearest scale of each block, float32 ``(rows, n_blocks, 1)``, before `stored_scale`.

    8 bits: absmax / 127. 4 bits: the signed value of largest magnitude / -8, as in Q4_0: that element
    maps to code -8, which uses the extra negative code that a plain absmax/7 scale would waste."""
    if bits == 8:
        return (np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
    if bits == 4:
        idx = np.abs(blocks).argmax(axis=-1)[..., None]
        scale = (np.take_along_axis(blocks, idx, axis=-1) / np.float32(-8)).astype(np.float32)
        return scale + np.float32(0)  # 0 / -8 is -0.0; store zero blocks with a plain +0 scale
    raise ValueError(f"no scale rule for {bits}-bit codes (defined: {CODE_BITS})")


def stored_scale(scale: np.ndarray, bits: int) -> np.ndarray:
    """The scale as formats store it: 4-bit scales are rounded to float16 *before* the codes are
    computed (so the codes are the nearest ones for the scale actually stored, and fp16-scale formats
    lose nothing); 8-bit scales stay float32."""
    if bits != 4:
        return scale
    if np.abs(scale).max(initial=0.0) > _FP16_MAX:
        raise ValueError(
            f"int4 scale {float(np.abs(scale).max()):.6g} exceeds the float16 range; "
            "the weight is too large for fp16-scaled int4"
        )
    with np.errstate(over="ignore"):
        return scale.astype(np.float16).astype(np.float32)


def block_sq_error(blocks: np.ndarray, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per-block squared error ``(rows, n_blocks, 1)`` of the float32 reconstruction that
    ``QuantizedTensor.dequantize`` produces, summed in float64."""
    recon = codes.astype(np.float32) * scale
    diff = blocks.astype(np.float64) - recon.astype(np.float64)
    return np.einsum("rbk,rbk->rb", diff, diff)[..., None]


def fp16_checked(weight: np.ndarray) -> np.ndarray:
    """`weight` as float16, or ValueError when a finite value overflows (the fp16 precision)."""
    weight = np.asarray(weight)
    with np.errstate(over="ignore"):
        half = weight.astype(np.float16)
    if (np.isinf(half) & np.isfinite(weight)).any():
        raise ValueError(f"weight of shape {weight.shape} has values beyond the float16 range ±{_FP16_MAX:g}")
    return half


def weighted_sq_error(
    blocks: np.ndarray, codes: np.ndarray, scale: np.ndarray, weights: np.ndarray | None
) -> np.ndarray:
    """Per-block ``sum_k weights_k (w_k - q_k)^2`` ``(rows, n_blocks, 1)`` in float64; `weights`
    broadcasts against `blocks` (per column ``(1, n_blocks, size)``, per row ``(rows, 1, 1)``), and
    ``None`` is plain squared error (`block_sq_error`)."""
    if weights is None:
        return block_sq_error(blocks, codes, scale)
    diff = blocks.astype(np.float64) - (codes.astype(np.float32) * scale).astype(np.float64)
    error: np.ndarray = (diff * diff * weights).sum(axis=-1, keepdims=True)
    return error


def clipped_scale(
    blocks: np.ndarray, bits: int, factors: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Codes and stored scale per block: the rtn scale, or the first clipping of it (rtn scale times
    one of `factors`) with a strictly lower (weighted) squared error. Starting from rtn and replacing
    it only when strictly better is what makes the result never worse than rtn on any block."""
    raw = absmax_scale(blocks, bits)
    scale = stored_scale(raw, bits)
    codes = encode(blocks, scale, bits)
    best = weighted_sq_error(blocks, codes, scale, weights)
    for factor in factors:
        cand_scale = stored_scale((raw * np.float32(factor)).astype(np.float32), bits)
        cand_codes = encode(blocks, cand_scale, bits)
        err = weighted_sq_error(blocks, cand_codes, cand_scale, weights)
        better = err < best
        best = np.where(better, err, best)
        scale = np.where(better, cand_scale, scale)
        codes = np.where(better, cand_codes, codes)
    return codes, scale
