"""Numpy kernels for the MIL ops whose semantics are more than a one-line numpy call.

They exist so a Core ML program can be evaluated on Linux, where `MLModel.predict` is not
available. Each kernel follows the MIL op definition (padding conventions, weight layouts, default
arguments) rather than torch's, because the graph being checked is what Core ML would run.
Half-precision tensors are computed in float32 and rounded back by the interpreter after each op:
numpy has no fast fp16 matmul, and a device keeps fp16 storage, not fp16 accumulation, anyway.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np


def _compute_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


def conv_padding(
    pad_type: str,
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pad: Sequence[int] | None,
) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim, per the MIL `conv` pad_type rules."""
    spatial = len(in_sizes)
    if pad_type == "valid":
        return [(0, 0)] * spatial
    if pad_type == "custom":
        p = [int(v) for v in (pad if pad is not None else [0] * 2 * spatial)]
        return [(p[2 * i], p[2 * i + 1]) for i in range(spatial)]
    if pad_type in ("same", "same_lower"):
        out: list[tuple[int, int]] = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
            effective = (k - 1) * d + 1
            total = max((-(-size // s) - 1) * s + effective - size, 0)
            small, big = total // 2, total - total // 2
            out.append((big, small) if pad_type == "same_lower" else (small, big))
        return out
    raise ValueError(f"unknown pad_type {pad_type!r}")


def conv(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: Sequence[int] | None = None,
    pad_type: str = "valid",
    pad: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    groups: int = 1,
) -> np.ndarray:
    """N-d grouped, strided, dilated convolution: x [N, Cin, *D], weight [Cout, Cin/groups, *K].

    Written as im2col plus one batched matmul, so the work lands in BLAS; the column buffer is
    kernel-size times the input, small for speech models' short 1-d kernels.
    """
    dtype = _compute_dtype(x)
    x = x.astype(dtype, copy=False)
    weight = weight.astype(dtype, copy=False)
    spatial = x.ndim - 2
    kernel = weight.shape[2:]
    strides = [int(s) for s in (strides if strides is not None else [1] * spatial)]
    dilations = [int(d) for d in (dilations if dilations is not None else [1] * spatial)]
    pads = conv_padding(pad_type, x.shape[2:], kernel, strides, dilations, pad)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    n, c_in = x.shape[:2]
    c_out = weight.shape[0]
    if c_in % groups or c_out % groups or weight.shape[1] != c_in // groups:
        raise ValueError(f"conv: {c_in} input channels, weight {weight.shape}, groups {groups} disagree")
    out_sizes = [
        (size - (k - 1) * d - 1) // s + 1
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True)
    ]
    if min(out_sizes, default=1) <= 0:
        raise ValueError(f"conv: input {x.shape} too small for kernel {kernel}")
    cig, cog = c_in // groups, c_out // groups
    xg = x.reshape(n, groups, cig, *x.shape[2:])
    taps = list(itertools.product(*(range(k) for k in kernel)))
    # im2col: one [cig * taps, positions] matrix per group, then a single batched matmul (BLAS)
    cols = np.empty((n, groups, cig, len(taps), int(np.prod(out_sizes))), dtype=dtype)
    for t, tap in enumerate(taps):
        index = tuple(
            slice(k * d, k * d + (o - 1) * s + 1, s)
            for k, d, o, s in zip(tap, dilations, out_sizes, strides, strict=True)
        )
        cols[:, :, :, t] = xg[(slice(None), slice(None), slice(None), *index)].reshape(n, groups, cig, -1)
    wg = weight.reshape(groups, cog, cig * len(taps))
    out = np.matmul(wg, cols.reshape(n, groups, cig * len(taps), -1))  # [n, g, cog, positions]
    out = out.reshape(n, c_out, *out_sizes)
    if bias is not None:
        out += bias.astype(dtype).reshape(1, c_out, *([1] * spatial))
    return out


def conv_transpose(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: Sequence[int] | None = None,
    pad_type: str = "valid",
    pad: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    groups: int = 1,
    output_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Transposed convolution: x [N, Cin, *D], weight [Cin, Cout/groups, *K] (MIL's layout).

    The full ("valid") result is scattered tap by tap, then cropped: `custom` crops pad[before] and
    pad[after]; `same` crops to D*stride, the odd element going to the end; an explicit
    `output_shape` (full [N, Cout, *D]) crops `pad[before]` at the start and cuts or zero-extends the
    end to the requested size.
    """
    dtype = _compute_dtype(x)
    x = x.astype(dtype, copy=False)
    weight = weight.astype(dtype, copy=False)
    spatial = x.ndim - 2
    kernel = weight.shape[2:]
    strides = [int(s) for s in (strides if strides is not None else [1] * spatial)]
    dilations = [int(d) for d in (dilations if dilations is not None else [1] * spatial)]
    n, c_in = x.shape[:2]
    if c_in != weight.shape[0] or c_in % groups:
        raise ValueError(f"conv_transpose: {c_in} input channels, weight {weight.shape}, groups {groups}")
    cig, cog = c_in // groups, weight.shape[1]
    c_out = cog * groups
    in_sizes = x.shape[2:]
    full_sizes = [
        (i - 1) * s + (k - 1) * d + 1 for i, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True)
    ]
    taps = list(itertools.product(*(range(k) for k in kernel)))
    xg = x.reshape(n, groups, cig, -1)
    # every tap's contribution in one batched matmul, then scattered (col2im) into the full output
    wg = np.swapaxes(weight.reshape(groups, cig, cog * len(taps)), 1, 2)  # [g, cog * taps, cig]
    contrib = np.matmul(wg, xg).reshape(n, groups, cog, len(taps), *in_sizes)
    full = np.zeros((n, groups, cog, *full_sizes), dtype=dtype)
    for t, tap in enumerate(taps):
        index = tuple(
            slice(k * d, k * d + (i - 1) * s + 1, s)
            for k, d, i, s in zip(tap, dilations, in_sizes, strides, strict=True)
        )
        full[(slice(None), slice(None), slice(None), *index)] += contrib[:, :, :, t]
    full = full.reshape(n, c_out, *full_sizes)

    p = [int(v) for v in (pad if pad is not None else [0] * 2 * spatial)]
    if output_shape is not None:
        targets = [int(v) for v in list(output_shape)[-spatial:]]
        starts = [p[2 * i] if pad_type == "custom" else 0 for i in range(spatial)]
        if pad_type == "same":
            starts = [max(f - t, 0) // 2 for f, t in zip(full_sizes, targets, strict=True)]
    elif pad_type == "custom":
        starts = [p[2 * i] for i in range(spatial)]
        targets = [full_sizes[i] - p[2 * i] - p[2 * i + 1] for i in range(spatial)]
    elif pad_type == "same":
        targets = [i * s for i, s in zip(in_sizes, strides, strict=True)]
        starts = [max(f - t, 0) // 2 for f, t in zip(full_sizes, targets, strict=True)]
    else:
        starts, targets = [0] * spatial, list(full_sizes)
    out = np.zeros((n, c_out, *targets), dtype=dtype)
    src = tuple(slice(st, min(st + t, f)) for st, t, f in zip(starts, targets, full_sizes, strict=True))
    dst = tuple(slice(0, min(st + t, f) - st) for st, t, f in zip(starts, targets, full_sizes, strict=True))
    out[(slice(None), slice(None), *dst)] = full[(slice(None), slice(None), *src)]
    if bias is not None:
        out += bias.astype(dtype).reshape(1, c_out, *([1] * spatial))
    return out


def gather(x: np.ndarray, indices: np.ndarray, axis: int = 0, batch_dims: int = 0) -> np.ndarray:
    """MIL `gather` (iOS17 form): negative indices count from the end, leading batch dims shared."""
    axis = axis % x.ndim
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    if batch_dims == 0:
        return np.take(x, idx, axis=axis)
    batch = x.shape[:batch_dims]
    xb = x.reshape(-1, *x.shape[batch_dims:])
    ib = idx.reshape(-1, *idx.shape[batch_dims:])
    parts = [np.take(xb[b], ib[b], axis=axis - batch_dims) for b in range(xb.shape[0])]
    stacked = np.stack(parts)
    return stacked.reshape(*batch, *stacked.shape[1:])


def gather_nd(x: np.ndarray, indices: np.ndarray, batch_dims: int = 0) -> np.ndarray:
    """MIL `gather_nd`: the last axis of `indices` addresses the leading dims of x (after batch)."""
    idx = np.asarray(indices).astype(np.int64)
    depth = idx.shape[-1]
    if batch_dims == 0:
        sizes = np.array(x.shape[:depth])
        idx = np.where(idx < 0, idx + sizes, idx)
        return x[tuple(np.moveaxis(idx, -1, 0))]
    batch = x.shape[:batch_dims]
    xb = x.reshape(-1, *x.shape[batch_dims:])
    ib = idx.reshape(-1, *idx.shape[batch_dims:])
    parts = [gather_nd(xb[b], ib[b]) for b in range(xb.shape[0])]
    stacked = np.stack(parts)
    return stacked.reshape(*batch, *stacked.shape[1:])


def gather_along_axis(x: np.ndarray, indices: np.ndarray, axis: int = 0) -> np.ndarray:
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take_along_axis(x, idx, axis=axis)


def slice_by_index(
    x: np.ndarray,
    begin: Sequence[int],
    end: Sequence[int],
    stride: Sequence[int] | None = None,
    begin_mask: Sequence[bool] | None = None,
    end_mask: Sequence[bool] | None = None,
    squeeze_mask: Sequence[bool] | None = None,
) -> np.ndarray:
    """Numpy slicing with MIL's masks; a masked bound becomes `None` so negative strides work."""
    rank = x.ndim
    stride = list(stride) if stride is not None else [1] * rank
    begin_mask = list(begin_mask) if begin_mask is not None else [False] * rank
    end_mask = list(end_mask) if end_mask is not None else [False] * rank
    squeeze_mask = list(squeeze_mask) if squeeze_mask is not None else [False] * rank
    index: list[slice | int] = []
    for i in range(rank):
        if squeeze_mask[i]:
            index.append(int(begin[i]))
            continue
        lo = None if begin_mask[i] else int(begin[i])
        hi = None if end_mask[i] else int(end[i])
        index.append(slice(lo, hi, int(stride[i])))
    return x[tuple(index)]


def slice_by_size(x: np.ndarray, begin: Sequence[int], size: Sequence[int]) -> np.ndarray:
    index = []
    for i, (b, s) in enumerate(zip(begin, size, strict=True)):
        b = int(b) % x.shape[i] if x.shape[i] else 0
        index.append(slice(b, None if int(s) == -1 else b + int(s)))
    return x[tuple(index)]


def cumsum(x: np.ndarray, axis: int = 0, exclusive: bool = False, reverse: bool = False) -> np.ndarray:
    y = np.flip(x, axis) if reverse else x
    out = np.cumsum(y, axis=axis, dtype=x.dtype)
    if exclusive:
        out = out - y
    return np.flip(out, axis) if reverse else out


def layer_norm(
    x: np.ndarray,
    axes: Sequence[int] | None,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    epsilon: float,
) -> np.ndarray:
    dtype = _compute_dtype(x)
    x = x.astype(dtype, copy=False)
    axes_t = tuple(int(a) % x.ndim for a in (axes if axes is not None else range(x.ndim)))
    mean = x.mean(axis=axes_t, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes_t, keepdims=True)
    out = (x - mean) / np.sqrt(var + dtype.type(epsilon))
    if gamma is not None:
        out = out * gamma.astype(dtype)
    if beta is not None:
        out = out + beta.astype(dtype)
    return out


def normalize_channels(
    x: np.ndarray,
    mean: np.ndarray | None,
    variance: np.ndarray | None,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    epsilon: float,
    *,
    instance: bool = False,
) -> np.ndarray:
    """batch_norm (given running stats) or instance_norm (per-sample stats) over axis 1."""
    dtype = _compute_dtype(x)
    x = x.astype(dtype, copy=False)
    shape = (1, x.shape[1], *([1] * (x.ndim - 2)))
    if instance:
        axes = tuple(range(2, x.ndim))
        mean_v = x.mean(axis=axes, keepdims=True)
        var_v = x.var(axis=axes, keepdims=True)
    else:
        mean_v = np.asarray(mean, dtype).reshape(shape)
        var_v = np.asarray(variance, dtype).reshape(shape)
    out = (x - mean_v) / np.sqrt(var_v + dtype.type(epsilon))
    if gamma is not None:
        out = out * np.asarray(gamma, dtype).reshape(shape)
    if beta is not None:
        out = out + np.asarray(beta, dtype).reshape(shape)
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    dtype = _compute_dtype(x)
    x = x.astype(dtype, copy=False)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def erf(x: np.ndarray) -> np.ndarray:
    """Error function to float32 accuracy (scipy is not a dependency): uses math.erf per element."""
    import math

    flat = np.asarray(x, np.float64).ravel()
    return (
        np.fromiter((math.erf(v) for v in flat), np.float64, flat.size)
        .reshape(np.shape(x))
        .astype(_compute_dtype(np.asarray(x)))
    )


def gelu(x: np.ndarray, mode: str = "EXACT") -> np.ndarray:
    dtype = _compute_dtype(x)
    x = x.astype(dtype, copy=False)
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi).astype(dtype) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * sigmoid(1.702 * x)
    return 0.5 * x * (1 + erf(x / np.sqrt(2.0).astype(dtype)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    # The two-branch form avoids overflow in exp for large |x|.
    dtype = _compute_dtype(x)
    x = x.astype(dtype, copy=False)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(dtype)


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x.astype(_compute_dtype(x), copy=False))


def pad(x: np.ndarray, pads: Sequence[int], mode: str = "constant", constant_val: float = 0.0) -> np.ndarray:
    """MIL `pad`: `pads` holds (before, after) pairs for the last len(pads)/2 dims."""
    p = [int(v) for v in pads]
    count = len(p) // 2
    widths = [(0, 0)] * (x.ndim - count) + [(p[2 * i], p[2 * i + 1]) for i in range(count)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=constant_val)
    if mode == "reflect":
        return np.pad(x, widths, mode="reflect")
    if mode == "replicate":
        return np.pad(x, widths, mode="edge")
    raise ValueError(f"pad: unknown mode {mode!r}")


def matmul(x: np.ndarray, y: np.ndarray, transpose_x: bool = False, transpose_y: bool = False) -> np.ndarray:
    dtype = _compute_dtype(x)
    x = x.astype(dtype, copy=False)
    y = y.astype(dtype, copy=False)
    if transpose_x:
        x = np.swapaxes(x, -1, -2) if x.ndim > 1 else x
    if transpose_y:
        y = np.swapaxes(y, -1, -2) if y.ndim > 1 else y
    return np.matmul(x, y)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """MIL `linear`: weight is [out, in] as in torch."""
    dtype = _compute_dtype(x)
    out = np.matmul(x.astype(dtype, copy=False), weight.astype(dtype, copy=False).T)
    if bias is not None:
        out = out + bias.astype(dtype)
    return out


def band_part(x: np.ndarray, lower: int = -1, upper: int = -1) -> np.ndarray:
    rows, cols = x.shape[-2:]
    i = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    keep = np.ones((rows, cols), bool)
    if lower >= 0:
        keep &= (i - j) <= lower
    if upper >= 0:
        keep &= (j - i) <= upper
    return np.where(keep, x, np.zeros((), x.dtype))


def upsample_nearest(x: np.ndarray, scales: Sequence[float]) -> np.ndarray:
    """Nearest-neighbour upsampling by integer factors over the trailing dims."""
    out = x
    for offset, scale in enumerate(scales):
        axis = x.ndim - len(scales) + offset
        factor = float(scale)
        if factor != int(factor):
            raise ValueError(f"upsample_nearest_neighbor: non-integer scale {factor} is not supported")
        out = np.repeat(out, int(factor), axis=axis)
    return out


#: the activations an MIL `lstm` names (those without extra parameters)
LSTM_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "linear": lambda x: x,
}


def _lstm_direction(
    x_proj: np.ndarray,
    weight_hh: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    peephole: np.ndarray | None,
    steps: Sequence[int],
    acts: tuple[str, str, str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One direction over `steps`; x_proj [s, b, 4H] already holds W_ih·x + bias, gates in MIL's
    i, f, o, z order. Returns every step's h [s, b, H] (in time order), and the last h and c."""
    recurrent, cell, activation = (LSTM_ACTIVATIONS[a] for a in acts)
    hidden = h.shape[-1]
    out = np.empty((x_proj.shape[0], *h.shape), dtype=h.dtype)
    for t in steps:
        gates = x_proj[t] + h @ weight_hh.T
        i, f, o, z = (gates[:, k * hidden : (k + 1) * hidden] for k in range(4))
        if peephole is not None:
            i = i + peephole[:hidden] * c
            f = f + peephole[hidden : 2 * hidden] * c
        c = recurrent(f) * c + recurrent(i) * cell(z)
        if peephole is not None:
            o = o + peephole[2 * hidden :] * c
        h = recurrent(o) * activation(c)
        out[t] = h
    return out, h, c


def lstm(
    x: np.ndarray,
    initial_h: np.ndarray,
    initial_c: np.ndarray,
    weights: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]],
    *,
    direction: str = "forward",
    output_sequence: bool = False,
    activations: tuple[str, str, str] = ("sigmoid", "tanh", "tanh"),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MIL `lstm` (iOS15 definition): x [s, b, I]; per direction (weight_ih [4H, I], weight_hh [4H, H],
    bias [4H] = b_ih + b_hh or None, peephole [3H] or None), gates ordered i, f, o, z (coremltools
    reorders torch's i, f, z, o); states [b, D·H] with the forward half first.

    Returns (output [s or 1, b, D·H], h [b, D·H], c [b, D·H]). A bidirectional output concatenates the
    forward and the reverse direction's states per time step, as torch does; the reverse direction's
    "last" state is the one after the first time step. The input projection is one matmul over all
    steps, so only the [b, H]×[H, 4H] recurrence loops."""
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"lstm: unknown direction {direction!r}")
    bad = [a for a in activations if a not in LSTM_ACTIVATIONS]
    if bad:
        supported = ", ".join(sorted(LSTM_ACTIVATIONS))
        raise ValueError(f"lstm: activation {bad[0]!r} is not supported (supported: {supported})")
    dtype = _compute_dtype(x)
    x = x.astype(dtype, copy=False)
    s = x.shape[0]
    hidden = weights[0][1].shape[1]
    reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    if len(weights) != len(reverse):
        raise ValueError(f"lstm: {direction} needs {len(reverse)} weight sets, got {len(weights)}")
    outs, hs, cs = [], [], []
    for d, (backward, (w_ih, w_hh, bias, peephole)) in enumerate(zip(reverse, weights, strict=True)):
        proj = x @ w_ih.astype(dtype).T
        if bias is not None:
            proj = proj + bias.astype(dtype)
        h0 = initial_h[:, d * hidden : (d + 1) * hidden].astype(dtype)
        c0 = initial_c[:, d * hidden : (d + 1) * hidden].astype(dtype)
        steps = range(s - 1, -1, -1) if backward else range(s)
        out, h, c = _lstm_direction(proj, w_hh.astype(dtype), h0, c0, peephole, steps, activations)
        outs.append(out if output_sequence else h[None])
        hs.append(h)
        cs.append(c)
    return np.concatenate(outs, axis=-1), np.concatenate(hs, axis=-1), np.concatenate(cs, axis=-1)
