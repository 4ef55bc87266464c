"""Numpy quantizers for the GGML k-quants Q4_K, Q5_K and Q6_K.

gguf-py quantizes F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 in numpy but only *de*quantizes the k-quants.
These encoders write the exact block layouts gguf-py's ``gguf.quants.dequantize`` (and llama.cpp) read:

- Q4_K (144 bytes / 256 weights): fp16 d, fp16 dmin, 12 bytes of packed 6-bit scales and mins for
  8 sub-blocks of 32, 128 bytes of 4-bit quants. A weight is ``d * sc[j] * q - dmin * m[j]``.
- Q5_K (176 bytes): as Q4_K plus 32 bytes holding the fifth (high) bit of every quant.
- Q6_K (210 bytes): 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales (one per
  16 weights), fp16 d. A weight is ``d * sc[j] * (q - 32)``.

The search follows the ideas of llama.cpp's reference quantizers (``make_qkx2_quants`` for the
scale/min of each Q4_K/Q5_K sub-block, ``make_qx_quants`` for the Q6_K sub-block scales), written
here vectorised over all blocks: the only Python loops run over a small grid of candidate scales.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = ["K_TYPES", "quantize_k", "quantize_blocks_q4_k", "quantize_blocks_q5_k", "quantize_blocks_q6_k"]

QK_K = 256  # weights per super-block
K_TYPES: dict[str, GGMLQuantizationType] = {
    "Q4_K": GGMLQuantizationType.Q4_K,
    "Q5_K": GGMLQuantizationType.Q5_K,
    "Q6_K": GGMLQuantizationType.Q6_K,
}
GROUP_MAX_EPS = 1e-15  # below this a Q6_K sub-block counts as all-zero (as in ggml)
_CHUNK_BLOCKS = 256  # super-blocks per vectorised batch: keeps temporaries cache-sized


def _sum(a: np.ndarray) -> np.ndarray:
    return a.sum(axis=-1, dtype=np.float32)


def _safe(den: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return np.where(ok, den, np.float32(1))


def make_qkx2_quants(
    x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric ``x ~ scale * L - min`` per row of ``x`` (n, 32), ``L`` in [0, nmax]; returns (scale, min).

    Starts from the min/max grid, then tries ``nstep + 1`` stretched grids; for each it takes the
    weighted least-squares scale and offset for those levels and keeps the best. As in ggml, each
    grid is laid from the best offset found so far, so the search also refines the offset. Weights
    favour large magnitudes (``rms(x) + |x|``). The offset only pulls values down: min >= 0.
    """
    w = np.sqrt(_sum(x * x) / np.float32(x.shape[-1]))[:, None] + np.abs(x)
    xmin = np.minimum(x.min(axis=-1), np.float32(0))
    xmax = x.max(axis=-1)
    flat = xmax <= xmin  # all zero, or a constant negative row: represented by the min alone
    sum_w, sum_x = _sum(w), _sum(w * x)
    sum_x2 = _sum(w * x * x).astype(np.float64)

    rng = _safe(xmax - xmin, ~flat)
    scale = rng / np.float32(nmax)
    lv = np.clip(np.rint((x - xmin[:, None]) * (np.float32(nmax) / rng)[:, None]), 0, nmax)
    best_err = _sum(w * np.square(scale[:, None] * lv + xmin[:, None] - x)).astype(np.float64)
    best_min = xmin
    for step in range(nstep + 1):
        rng = xmax - best_min
        ok = rng > 0
        iscale = np.float32(nmax + rmin + rdelta * step) / _safe(rng, ok)
        lv = np.clip(np.rint((x - best_min[:, None]) * iscale[:, None]), 0, nmax)
        wl = w * lv
        sum_l, sum_l2, sum_xl = _sum(wl), _sum(wl * lv), _sum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok &= det > 0
        det = _safe(det, ok)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        pos = this_min > 0  # the offset may only pull values down: refit the scale with min = 0
        this_min = np.where(pos, np.float32(0), this_min)
        this_scale = np.where(pos, sum_xl / _safe(sum_l2, sum_l2 > 0), this_scale)
        # weighted squared error of this fit, expanded into the sums above (no extra pass over x)
        s, m = this_scale.astype(np.float64), this_min.astype(np.float64)
        err = s * s * sum_l2 + 2 * s * m * sum_l - 2 * s * sum_xl + m * m * sum_w - 2 * m * sum_x + sum_x2
        better = ok & (err < best_err)
        best_err = np.where(better, err, best_err)
        scale = np.where(better, this_scale, scale)
        best_min = np.where(better, this_min, best_min)
    return np.where(flat, np.float32(0), scale), -best_min


def make_qx_quants(x: np.ndarray, nmax: int) -> np.ndarray:
    """Symmetric ``x ~ scale * L`` per row of ``x`` (n, 16), ``L`` in [-nmax, nmax - 1]; returns scale.

    The value of largest magnitude maps to -nmax (the side with one more level); 18 grids around that
    are tried and the scale maximising the x²-weighted fit (least squares for each grid) wins. The
    scale comes out negative when that value is positive.
    """
    w = x * x
    idx = np.abs(x).argmax(axis=-1)[:, None]
    vmax = np.take_along_axis(x, idx, axis=-1)[:, 0]
    zero = np.abs(vmax) < GROUP_MAX_EPS
    vmax = _safe(vmax, ~zero)

    best_scale = np.zeros(x.shape[0], dtype=np.float32)
    best = np.full(x.shape[0], -np.inf, dtype=np.float32)
    for step in [0, *range(-9, 0), *range(1, 10)]:
        iscale = -np.float32(nmax + 0.1 * step) / vmax
        lv = np.clip(np.rint(x * iscale[:, None]), -nmax, nmax - 1)
        wl = w * lv
        sum_lx, sum_l2 = _sum(wl * x), _sum(wl * lv)
        ok = sum_l2 > 0
        this_scale = np.where(ok, sum_lx / _safe(sum_l2, ok), np.float32(0))
        score = this_scale * sum_lx  # = sum_lx² / sum_l2: the error reduction of this grid
        better = ok & (score > best) if step else np.ones_like(ok)
        best = np.where(better, score, best)
        best_scale = np.where(better, this_scale, best_scale)
    return np.where(zero, np.float32(0), best_scale)


def _fp16(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 bytes (n, 2), the value as stored, back in float32)."""
    h = v.astype(np.float16)
    return h.view(np.uint8).reshape(-1, 2), h.astype(np.float32)


def _pack_scales_mins(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and 8 six-bit mins (n, 8) into the 12-byte k-quant layout (see gguf-py)."""
    lo_sc, hi_sc = sc[:, :4], sc[:, 4:]
    lo_mn, hi_mn = mn[:, :4], mn[:, 4:]
    b0 = lo_sc | ((hi_sc >> 4) << 6)  # bytes 0-3: scale j, top 2 bits of scale j+4
    b1 = lo_mn | ((hi_mn >> 4) << 6)  # bytes 4-7: min j, top 2 bits of min j+4
    b2 = (hi_sc & 0x0F) | ((hi_mn & 0x0F) << 4)  # bytes 8-11: low nibbles of scale/min j+4
    return np.concatenate([b0, b1, b2], axis=-1).astype(np.uint8)


def _quantize_scale_min_blocks(blocks: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Shared Q4_K/Q5_K part: sub-block search, 6-bit scales/mins, final levels. Returns bytes pieces."""
    n_blocks = blocks.shape[0]
    sub = blocks.reshape(n_blocks * 8, 32)
    scales, mins = make_qkx2_quants(sub, nmax, rmin, 0.1, nstep)
    scales, mins = scales.reshape(n_blocks, 8), mins.reshape(n_blocks, 8)

    max_scale, max_min = scales.max(axis=-1), mins.max(axis=-1)
    inv_scale = np.where(max_scale > 0, np.float32(63) / _safe(max_scale, max_scale > 0), np.float32(0))
    inv_min = np.where(max_min > 0, np.float32(63) / _safe(max_min, max_min > 0), np.float32(0))
    ls = np.clip(np.rint(scales * inv_scale[:, None]), 0, 63).astype(np.uint8)
    lm = np.clip(np.rint(mins * inv_min[:, None]), 0, 63).astype(np.uint8)
    d_bytes, d = _fp16(max_scale / np.float32(63))
    dmin_bytes, dmin = _fp16(max_min / np.float32(63))

    # final levels against the scales as they will be decoded (fp16 d times the 6-bit sub-scale)
    d_sub = (d[:, None] * ls).reshape(n_blocks, 8, 1)
    m_sub = (dmin[:, None] * lm).reshape(n_blocks, 8, 1)
    x = blocks.reshape(n_blocks, 8, 32)
    has = d_sub != 0
    q = np.where(has, np.rint((x + m_sub) / _safe(d_sub, has)), np.float32(0))
    q = np.clip(q, 0, nmax).astype(np.uint8)
    return d_bytes, dmin_bytes, _pack_scales_mins(ls, lm), q


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 8, 32) levels -> 128 bytes: byte 32*g + l holds sub-block 2g (low) and 2g+1 (high nibble)."""
    q = (q & 0x0F).reshape(q.shape[0], 4, 2, 32)
    return (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(q.shape[0], 128)


def quantize_blocks_q4_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 144) uint8 Q4_K blocks."""
    d, dmin, scales, q = _quantize_scale_min_blocks(blocks, nmax=15, rmin=-1.0, nstep=20)
    return np.concatenate([d, dmin, scales, _pack_nibbles(q)], axis=-1)


def quantize_blocks_q5_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 176) uint8 Q5_K blocks."""
    d, dmin, scales, q = _quantize_scale_min_blocks(blocks, nmax=31, rmin=-0.5, nstep=15)
    # high bits: bit j of byte l is the fifth bit of weight l of sub-block j
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    qh = np.bitwise_or.reduce(((q >> 4) & 1) << shifts, axis=1).astype(np.uint8)
    return np.concatenate([d, dmin, scales, qh, _pack_nibbles(q)], axis=-1)


def quantize_blocks_q6_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 210) uint8 Q6_K blocks."""
    n_blocks = blocks.shape[0]
    scales = make_qx_quants(blocks.reshape(n_blocks * 16, 16), nmax=32).reshape(n_blocks, 16)

    idx = np.abs(scales).argmax(axis=-1)[:, None]
    max_scale = np.take_along_axis(scales, idx, axis=-1)[:, 0]
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = np.where(zero, np.float32(0), np.float32(-128) / _safe(max_scale, ~zero))
    sc = np.clip(np.rint(scales * iscale[:, None]), -128, 127).astype(np.int8)
    d_bytes, d = _fp16(np.where(zero, np.float32(0), np.float32(1) / _safe(iscale, ~zero)))

    d_sub = (d[:, None] * sc).reshape(n_blocks, 16, 1)
    x = blocks.reshape(n_blocks, 16, 16)
    has = d_sub != 0
    q = np.where(has, np.rint(x / _safe(d_sub, has)), np.float32(0))
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n_blocks, QK_K)

    # element 128a + 64h + p: low nibble in byte 64a + p (h = 0: low half of the byte, h = 1: high)
    lo = (q & 0x0F).reshape(n_blocks, 2, 2, 64)
    ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(n_blocks, 128)
    # element 128a + 32s + l: top 2 bits in byte 32a + l at bit 2s
    hi = (q >> 4).reshape(n_blocks, 2, 4, 32)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n_blocks, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d_bytes], axis=-1)


_QUANTIZERS = {
    "Q4_K": quantize_blocks_q4_k,
    "Q5_K": quantize_blocks_q5_k,
    "Q6_K": quantize_blocks_q6_k,
}


def quantize_k(weight: np.ndarray, qtype: str) -> np.ndarray:
    """Quantize a float matrix (rows, cols) to a k-quant; cols must be a multiple of 256.

    Returns uint8 bytes shaped like gguf-py's ``quantize()`` output, (rows, cols // 256 * type_size),
    ready for ``GGUFWriter.add_tensor(..., raw_dtype=K_TYPES[qtype])``.
    """
    if qtype not in K_TYPES:
        raise ValueError(f"unknown k-quant type {qtype!r}; expected one of {sorted(K_TYPES)}")
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim < 1 or weight.shape[-1] % QK_K != 0:
        raise ValueError(
            f"{qtype} needs rows made of whole {QK_K}-weight super-blocks, but the row length is "
            f"{weight.shape[-1] if weight.ndim else 'a scalar'} (not a multiple of {QK_K}); "
            "use a 32-block type (Q8_0/Q5_0/Q4_0) or F16 for this tensor"
        )
    if not np.isfinite(weight).all():
        raise ValueError(f"cannot quantize to {qtype}: the weight holds NaN or infinite values")
    type_size = GGML_QUANT_SIZES[K_TYPES[qtype]][1]
    blocks = weight.reshape(-1, QK_K)
    quantize_blocks = _QUANTIZERS[qtype]
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[start : start + _CHUNK_BLOCKS] = quantize_blocks(blocks[start : start + _CHUNK_BLOCKS])
    return out.reshape(*weight.shape[:-1], weight.shape[-1] // QK_K * type_size)
