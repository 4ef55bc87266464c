"""Symmetric int8 / int4 quantization in plain numpy, computed once for every export format.

The arithmetic deliberately mirrors gguf-py's ``quants.py`` (multiply by a float32 reciprocal scale,
GGML's rounding rules) so that the same codes can be written as GGUF ``Q4_0`` blocks, ONNX
``DequantizeLinear`` initializers or CoreML blockwise constants, and dequantize identically in each.

Every weight is viewed as 2-D, ``(shape[0], prod(shape[1:]))``; blocks run along axis 1 of that view
(see ``tensor.py``). When ``cols`` is not a multiple of ``block_size`` the last block of each row is
partial: it is quantized as if zero-padded to a full block, and the padding is dropped, so
``n_blocks = ceil(cols / block_size)`` and ``QuantizedTensor.dequantize`` (which truncates the repeated
scales to ``cols``) reads it back correctly. Formats that need whole blocks (GGUF) must reject or
re-block such tensors; the plan never sends a tensor with ``cols < block_size`` to int4.
"""

from __future__ import annotations

import numpy as np

from voxport.quantize.tensor import QuantizedTensor

PRECISIONS = ("fp32", "fp16", "int8", "int4")
METHODS = ("rtn", "mse")

# Clipping factors tried by "mse", relative to the rtn scale; the rtn scale itself (factor 1) is always
# the starting candidate, which is what guarantees mse never does worse than rtn on any block.
MSE_FACTORS = np.linspace(0.5, 1.0, 33, dtype=np.float64)[:-1]

_FP16_MAX = float(np.finfo(np.float16).max)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; allowed: {', '.join(METHODS)}")


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
    """``(rows, n_blocks, block_size)``, zero-padding the partial last block (zeros never change a
    block's absmax and always encode to code 0, so they cannot influence scale choice or error)."""
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


def _encode_int8(blocks: np.ndarray, scale: np.ndarray) -> np.ndarray:
    q = _round_half_away(blocks * _reciprocal(scale))
    return np.clip(q, -127, 127).astype(np.int8)


def _encode_int4(blocks: np.ndarray, scale: np.ndarray) -> np.ndarray:
    # Exactly gguf-py's Q4_0: trunc(x * (1/d) + 8.5) in float32, clipped to [0, 15], minus the offset 8.
    # Adding 8.5 (not 0.5) matters: it is where float32 rounding happens in the reference.
    q = np.floor(blocks * _reciprocal(scale) + np.float32(8.5))
    return (np.clip(q, 0, 15) - 8).astype(np.int8)


def _int8_rtn_scale(blocks: np.ndarray) -> np.ndarray:
    return (np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)


def _int4_raw_scale(blocks: np.ndarray) -> np.ndarray:
    """Signed value of largest magnitude / -8, as in Q4_0: that element maps to code -8, which uses the
    extra negative code that a plain absmax/7 scale would waste."""
    idx = np.abs(blocks).argmax(axis=-1)[..., None]
    scale = (np.take_along_axis(blocks, idx, axis=-1) / np.float32(-8)).astype(np.float32)
    return scale + np.float32(0)  # 0 / -8 is -0.0; store zero blocks with a plain +0 scale


def _fp16_exact(scale: np.ndarray) -> np.ndarray:
    """Round scales to float16 before computing codes, so fp16-scale formats store them losslessly."""
    if np.abs(scale).max(initial=0.0) > _FP16_MAX:
        raise ValueError(
            f"int4 scale {float(np.abs(scale).max()):.6g} exceeds the float16 range; "
            "the weight is too large for fp16-scaled int4"
        )
    with np.errstate(over="ignore"):
        return scale.astype(np.float16).astype(np.float32)


def _block_sq_error(blocks: np.ndarray, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per-block squared error of the float32 reconstruction ``QuantizedTensor.dequantize`` produces."""
    recon = codes.astype(np.float32) * scale
    diff = blocks.astype(np.float64) - recon.astype(np.float64)
    return np.einsum("rbk,rbk->rb", diff, diff)[..., None]


def _search(
    blocks: np.ndarray, raw_scale: np.ndarray, bits: int, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """Codes and scales for every block: rtn, or the best of the clipped candidates per block.

    Vectorised over all blocks at once; only the candidate grid is a Python loop. A candidate replaces
    the current choice only when strictly better, so ties (including all-zero blocks) keep rtn.
    """
    encode = _encode_int4 if bits == 4 else _encode_int8
    finish = _fp16_exact if bits == 4 else (lambda s: s)

    scale = finish(raw_scale)
    codes = encode(blocks, scale)
    if method == "rtn":
        return codes, scale

    best_err = _block_sq_error(blocks, codes, scale)
    for factor in MSE_FACTORS:
        cand_scale = finish((raw_scale * np.float32(factor)).astype(np.float32))
        cand_codes = encode(blocks, cand_scale)
        err = _block_sq_error(blocks, cand_codes, cand_scale)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        scale = np.where(better, cand_scale, scale)
        codes = np.where(better, cand_codes, codes)
    return codes, scale


def _pack(
    codes: np.ndarray,
    scale: np.ndarray,
    cols: int,
    *,
    bits: int,
    block_size: int,
    shape: tuple[int, ...],
    method: str,
) -> QuantizedTensor:
    rows = codes.shape[0]
    return QuantizedTensor(
        codes=np.ascontiguousarray(codes.reshape(rows, -1)[:, :cols]),
        scales=np.ascontiguousarray(scale.reshape(rows, -1).astype(np.float32)),
        offsets=None,
        bits=bits,
        block_size=block_size,
        shape=shape,
        method=method,
    )


def quantize_int8(weight: np.ndarray, *, method: str = "rtn") -> QuantizedTensor:
    """Symmetric int8, one scale per row (output channel): codes in [-127, 127], so -128 is never used
    and the encoding stays sign-symmetric like ONNX/CoreML per-channel int8 expect."""
    _check_method(method)
    w2 = _as_2d(weight)
    rows, cols = w2.shape
    blocks = w2.reshape(rows, 1, cols)
    codes, scale = _search(blocks, _int8_rtn_scale(blocks), 8, method)
    return _pack(codes, scale, cols, bits=8, block_size=cols, shape=tuple(np.shape(weight)), method=method)


def quantize_int4(weight: np.ndarray, *, block_size: int = 32, method: str = "rtn") -> QuantizedTensor:
    """Symmetric int4 in blocks of ``block_size`` along axis 1 of the 2-D view, codes in [-8, 7].

    Scales are rounded to float16 *before* the codes are computed, so the codes are the nearest ones for
    the scale that is actually stored; with block 32 and ``rtn`` this is GGUF ``Q4_0`` exactly, except
    that gguf-py picks codes with the unrounded scale (about one element in 2,000 differs by one code).
    A partial last block is handled as described in the module docstring.
    """
    _check_method(method)
    if not isinstance(block_size, (int, np.integer)) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    block_size = int(block_size)
    w2 = _as_2d(weight)
    cols = w2.shape[1]
    blocks = _to_blocks(w2, block_size)
    codes, scale = _search(blocks, _int4_raw_scale(blocks), 4, method)
    return _pack(
        codes, scale, cols, bits=4, block_size=block_size, shape=tuple(np.shape(weight)), method=method
    )


def quantize(
    weight: np.ndarray, precision: str, *, method: str = "rtn", block_size: int = 32
) -> QuantizedTensor | np.ndarray:
    """One entry point for every storage precision, so callers can drive it from a plan's decisions.

    fp32/fp16 apply to any float tensor (biases included); int8/int4 only to >= 2-D weights.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    _check_method(method)
    if precision == "fp32":
        return np.asarray(weight, dtype=np.float32)
    if precision == "fp16":
        weight = np.asarray(weight)
        with np.errstate(over="ignore"):
            half = weight.astype(np.float16)
        if (np.isinf(half) & np.isfinite(weight)).any():
            raise ValueError(
                f"weight of shape {weight.shape} has values beyond the float16 range ±{_FP16_MAX:g}"
            )
        return half
    if precision == "int8":
        return quantize_int8(weight, method=method)
    return quantize_int4(weight, block_size=block_size, method=method)
