"""Place voxport's own QuantizedTensors into a Core ML MIL program, bit for bit.

The torch frontend of coremltools turns every weight into a plain ``const`` op holding the fp32 (or,
under FLOAT16 compute precision, the fp16-cast) value. `compress_program` finds the const op whose
value *is* a model weight and swaps it for ops that dequantize to exactly
``QuantizedTensor.dequantize()`` — the same floats the ONNX ``DequantizeLinear`` and the GGUF ``Q4_0``
blocks give. coremltools' own ``linear_quantize_weights`` is deliberately not used: it would compute
its own scales and codes, and the artifacts would no longer agree with each other.

Matching is by value, not by name: op names are whatever the tracer produced (``conv.weight``,
``conv.weight_to_fp16``, ``_val_12`` …), while the bytes of a weight are unique in practice. A value is
looked up as the exact fp32 bytes of the state_dict tensor (any reshape keeps those bytes), as the
bytes of its fp16 cast (the ``add_fp16_cast`` pass under FLOAT16 compute precision), and as the bytes
of its transpose (2-D, e.g. a ``matmul`` weight folded to ``W.T``) or of its first two axes swapped
(N-D). The torch frontend and default passes of coremltools 9 keep Linear ``(out, in)``, Conv
``(out, in, k)``, ConvTranspose ``(in, out, k)`` and Embedding ``(num, dim)`` in torch's layout;
the transposed lookups are there for graphs where a pass folds a ``transpose`` into the constant.
When two weights have identical bytes, the one whose name matches the op name wins, else the first.

Encodings (iOS18 / macOS15 / watchOS11 opset, ``constexpr_blockwise_shift_scale``,
``output = scale * (data - offset)``, no offset here since voxport's codes are symmetric):

- data holds our int8 codes (int4 codes as MIL ``int4``) and scale our float32 scales, so the
  product ``codes * scale`` is the same single float32 rounding ``QuantizedTensor.dequantize`` does.
- Core ML blocks are axis-aligned (``block_size[i] = data.shape[i] / scale.shape[i]``); ours run along
  the flattened ``prod(shape[1:])`` axis and the last one of a row may be partial. Any Core ML block
  ``b`` dividing both our block and ``cols`` lies inside one of ours, so our scale repeated over it is
  exact: when such a ``b >= 16`` (or per-channel) maps onto whole trailing axes, ONE constexpr in the
  kernel's own shape is emitted (per-channel int8; Linear weights, also 48-column ones via Core ML
  blocks of 16; ConvTranspose/Conv kernels whose length divides the block). This is a compile-time
  constant for Core ML, like coremltools' own compressed weights.
- Otherwise (int4 blocks of 32 over a ``(out, in, 3)`` or ``(out, in, 7)`` Conv kernel cross the kernel
  axis) the constexpr is emitted on the 2-D ``(rows, n_blocks * 32)`` view, zero-padded, followed by
  ``slice_by_size`` / ``reshape`` / ``transpose``: exact, but the weight is then computed at runtime.
  Core ML allows that for ``conv`` with unit dilations and ``matmul`` (a ``linear`` that lost its const
  weight is rewritten to ``matmul`` by coremltools' ``expand_dynamic_linear`` pass, run here), not for
  ``conv_transpose`` or a dilated ``conv`` (HiFi-GAN's resblocks): those weights are stored as plain
  consts holding the exact dequantized values and listed in ``unplaced`` (``const_weights="dense"``,
  the default), or, with ``const_weights="computed"``, emitted with the layout ops anyway.
- In an fp16 program the const being replaced is fp16. fp16-exact scales (all int4 scales) are stored
  as fp16: ``codes * scale`` is exact in float32 and Core ML rounds the product once to fp16, i.e. to
  ``dequantize().astype(float16)``. Scales that are not fp16-exact (int8) stay fp32 and a ``cast`` to
  fp16 follows, so the weights are still ``dequantize().astype(float16)`` rather than a re-rounded
  scale times the codes (``fp16_scales="round"`` trades that exactness for a pure constexpr). When
  such a program is serialized with the main pass pipeline, pass `mlprogram_compute_precision`:
  coremltools' fp16 pass would otherwise re-cast the fp32 scales to fp16.

Deployment targets before iOS18 (iOS17 / macOS14 / watchOS10): int8 per-channel is emitted as the
iOS16 ``constexpr_affine_dequantize`` (int8 data, int8 zero point 0, one scale per output channel
along axis 0), which is exact for our symmetric codes in [-127, 127]. Blockwise weights (int4, or int8
with blocks) have no encoding there and `compress_program` raises `BadInput` before touching the
program, naming ``export.coreml.target``.

Weights kept in floating point by the plan (``np.ndarray`` in ``QuantizedModel.weights``) stay plain
consts. Their value is set to the stored value cast to the const's dtype: in an fp32 program an
fp16-stored weight holds the fp16-rounded numbers (as ONNX stores them), in an fp16 program every
float weight is fp16 anyway.

Asymmetric QuantizedTensors (``w = codes * scale + offset``) are not placed: Core ML's offset is
subtracted before scaling, and ``-offset / scale`` is not exact. They are reported as unplaced.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from voxport.errors import BadInput
from voxport.quantize.tensor import QuantizedTensor

Stored = np.ndarray | QuantizedTensor

#: the message users see when the recipe's target cannot hold blockwise weights
TARGET_MESSAGE = "int4 blockwise needs iOS18/macOS15/watchOS11; set export.coreml.target"

#: the graph-pass name recorded in the scope info of every op this module creates
PASS_NAME = "voxport_compress_weights"

#: layouts under which a weight can appear in a const op (see the module docstring)
IDENTITY, TRANSPOSE, SWAP01 = "identity", "transpose", "swap01"


@dataclass(frozen=True)
class PlacedWeight:
    """How one weight ended up in the program: the ops replaced and the encoding used."""

    name: str
    const_ops: tuple[str, ...]
    layout: str
    encoding: str
    #: the ops that now produce the weight (the new constexpr, or the kept const), one per const op
    new_ops: tuple[str, ...]
    #: bits stored for this weight (codes incl. padding, plus scales) and its element count
    stored_bits: int
    elements: int


@dataclass
class CompressionResult:
    """What `compress_program` did, in the form the pipeline and manifest need.

    placed:    quantized weights now encoded as constexpr ops, by weight name.
    kept:      float weights found as plain consts (value set to the stored precision).
    dense:     quantized weights whose blocks Core ML cannot express where they are used (a
               ``conv_transpose`` or dilated ``conv`` needs a const weight): stored as plain consts
               holding the exact dequantized values; also listed in ``unplaced``.
    unplaced:  quantized weights that are not in the program (or have no exact encoding), in the
               manifest's ``skipped_weights`` row format, so nothing silently stays fp32.
    """

    placed: dict[str, PlacedWeight] = field(default_factory=dict)
    kept: dict[str, PlacedWeight] = field(default_factory=dict)
    dense: dict[str, PlacedWeight] = field(default_factory=dict)
    unplaced: list[dict[str, str]] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        """Stored bits over the elements of every weight found in the program (quantized and float)."""
        rows = [*self.placed.values(), *self.kept.values(), *self.dense.values()]
        elements = sum(r.elements for r in rows)
        return sum(r.stored_bits for r in rows) / max(elements, 1)

    @property
    def quantized_bits_per_weight(self) -> float:
        """Same, over the quantized weights only (codes plus their scales)."""
        rows = list(self.placed.values())
        return sum(r.stored_bits for r in rows) / max(sum(r.elements for r in rows), 1)


def fp16_op_selector(op: Any) -> bool:
    """``FP16ComputePrecision(op_selector=...)``: every op but the constexpr weight ops goes to fp16.

    coremltools' ``add_fp16_cast`` pass would otherwise rewrite a constexpr with fp32 scales into one
    with fp16 scales — ``codes * fp16(scale)``, a different weight. Left alone, the constexpr yields
    the exact fp32 product and the pass (or our own ``cast``) rounds it once to fp16, which is
    ``QuantizedTensor.dequantize().astype(float16)``."""
    return not op.op_type.startswith("constexpr_")


def mlprogram_compute_precision(fp16: bool) -> Any:
    """The ``compute_precision`` to pass to ``ct.convert(program, convert_to="mlprogram", ...)`` after
    `compress_program`: the conversion runs the fp16 pass again, and it must not touch our weights."""
    import coremltools as ct

    return ct.transform.FP16ComputePrecision(op_selector=fp16_op_selector) if fp16 else ct.precision.FLOAT32


# ---------------------------------------------------------------------------------------------- matching


def _digest(array: np.ndarray) -> tuple[str, int, str]:
    contiguous = np.ascontiguousarray(array)
    return (contiguous.dtype.str, contiguous.size, hashlib.sha1(contiguous.tobytes()).hexdigest())


def _layouts(array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    yield IDENTITY, array
    if array.ndim == 2:
        yield TRANSPOSE, array.T
    elif array.ndim >= 3:
        yield SWAP01, np.swapaxes(array, 0, 1)


class WeightIndex:
    """Look up which model weight a const value is, in fp32 or fp16, under the layouts above."""

    def __init__(self, state_dict: Mapping[str, Any], names: Iterable[str]) -> None:
        self._by_digest: dict[tuple[str, int, str], list[tuple[str, str]]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name in names:
            if name not in state_dict:
                continue
            array = _numpy(state_dict[name])
            if not np.issubdtype(array.dtype, np.floating) or array.ndim == 0:
                continue
            self.shapes[name] = tuple(array.shape)
            fp32 = array.astype(np.float32)
            with np.errstate(over="ignore"):
                fp16 = fp32.astype(np.float16)
            for dtype_view in (fp32, fp16):
                for layout, view in _layouts(dtype_view):
                    self._by_digest.setdefault(_digest(view), []).append((name, layout))

    def lookup(self, value: np.ndarray, op_name: str) -> tuple[str, str] | None:
        """(weight name, layout) of a const value, preferring a weight whose name the op carries."""
        if (
            not isinstance(value, np.ndarray)
            or value.dtype not in (np.float32, np.float16)
            or value.ndim == 0
        ):
            return None
        hits = self._by_digest.get(_digest(value))
        if not hits:
            return None
        # identical bytes under several names/layouts: the op's own name decides, then layout order
        base = op_name.removesuffix("_to_fp16")
        for name, layout in hits:
            if name == base or base.endswith(name):
                return name, layout
        # identity is indexed before the transposed views, so a symmetric matrix reads as identity
        return hits[0]


def mil_name(name: str) -> str:
    """A MIL-legal op name (``[A-Za-z_][A-Za-z0-9_]*``): saving sanitizes names anyway, and picking the
    legal form here means the names reported in `PlacedWeight` are the ones found in the saved model."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return safe if re.match(r"[A-Za-z_]", safe) else f"_{safe}"


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def const_ops(block: Any) -> Iterator[Any]:
    """Every const op of a block, nested blocks (cond / while bodies) included."""
    for op in list(block.operations):
        for inner in op.blocks:
            yield from const_ops(inner)
        if op.op_type == "const":
            yield op


# ---------------------------------------------------------------------------------------------- encodings


#: smallest Core ML block used to express our blocks without runtime ops (see `_direct_blocks`)
MIN_DIRECT_BLOCK = 16


def _axis_aligned(shape: tuple[int, ...], block: int) -> tuple[int, ...] | None:
    """Scale shape for blocks of `block` consecutive elements of ``prod(shape[1:])``, if axis-aligned.

    Such a block is axis-aligned when the trailing axes after some axis ``m`` fit into it a whole
    number of times and the remainder divides ``shape[m]``: block sizes are then 1 before ``m``,
    ``block / tail`` at ``m`` and full after it."""
    rank = len(shape)
    tail = 1
    for m in range(rank - 1, 0, -1):
        if block % tail == 0 and shape[m] % (block // tail) == 0:
            return (shape[0], *shape[1:m], shape[m] // (block // tail), *([1] * (rank - m - 1)))
        tail *= shape[m]
        if tail > block:
            break
    return None


def _direct_blocks(shape: tuple[int, ...], block_size: int, cols: int) -> tuple[int, tuple[int, ...]] | None:
    """(Core ML block, scale shape) reproducing our blocks with one constexpr in the kernel's shape.

    Core ML blocks must tile every axis; ours run along the flattened axis and the last one may be
    partial. Any Core ML block ``b`` dividing both ``block_size`` and ``cols`` lies inside one of our
    blocks, so repeating our scale over its ``block_size / b`` Core ML blocks is exact (48 columns with
    blocks of 32 → Core ML blocks of 16). The largest axis-aligned such ``b`` wins, if at least
    `MIN_DIRECT_BLOCK` (or all of ``cols``: per-channel); smaller ones would spend more on scales than
    a few runtime ops cost."""
    g = math.gcd(block_size, cols)
    for b in sorted((d for d in range(1, g + 1) if g % d == 0), reverse=True):
        if b < MIN_DIRECT_BLOCK and b != cols:
            return None
        scale_shape = _axis_aligned(shape, b)
        if scale_shape is not None:
            return b, scale_shape
    return None


def _target_ge_ios18(program: Any) -> bool:
    from coremltools.converters.mil._deployment_compatibility import AvailableTarget

    version = program.functions["main"].opset_version
    return version is not None and version >= AvailableTarget.iOS18


def _is_blockwise(q: QuantizedTensor) -> bool:
    return q.block_size < q.cols


def _fp16_exact(values: np.ndarray) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.array_equal(values.astype(np.float16).astype(np.float32), values))


class _Emitter:
    """Builds the ops for one const op; all new ops go right before it so the order stays valid."""

    def __init__(self, op: Any, name: str, *, round_fp16_scales: bool = False) -> None:
        from coremltools.converters.mil import Builder as mb

        self.round_fp16_scales = round_fp16_scales
        self.mb = mb
        self.op = op
        self.name = mil_name(name)
        self.root = ""
        self.bits = 0

    def _finish(self, var: Any, cast_after: bool, const_shape: tuple[int, ...]) -> Any:
        """The common tail: the fp16 cast (fp32 scales in an fp16 program), then the const's shape."""
        mb, op = self.mb, self.op
        if cast_after:
            var = mb.cast(x=var, dtype="fp16", before_op=op, name=f"{self.name}_fp16")
        if tuple(var.shape) != tuple(const_shape):
            var = mb.reshape(
                x=var, shape=np.asarray(const_shape, np.int32), before_op=op, name=f"{self.name}_as_const"
            )
        return var

    def blockwise(self, q: QuantizedTensor, layout: str, const_shape: tuple[int, ...], fp16: bool) -> Any:
        from coremltools.converters.mil.mil import types

        mb, op = self.mb, self.op
        scales = q.scales.astype(np.float32)
        cast_after = _needs_cast(scales, fp16, self.round_fp16_scales)
        scale_dtype = np.float16 if fp16 and not cast_after else np.float32
        code_dtype = types.np_int4_dtype if q.bits == 4 else np.int8
        rows, cols, block = q.rows, q.cols, q.block_size
        post: list[tuple[str, Any]] = []

        direct = _direct_blocks(q.shape, block, cols)
        if direct is not None:
            b, scale_shape = direct
            # our scale for each Core ML block, then the blockwise broadcast shape
            expanded = scales[:, (np.arange(cols // b) * b) // block]
            data, scale = q.codes.reshape(q.shape), expanded.reshape(scale_shape)
            if layout == TRANSPOSE:
                data, scale = q.codes.T, expanded.T
            elif layout == SWAP01:
                data, scale = np.swapaxes(data, 0, 1), np.swapaxes(scale, 0, 1)
        else:
            # 2-D view, whole blocks (zero codes pad a partial last one), then back to the kernel
            padded = q.n_blocks * block
            data = np.zeros((rows, padded), np.int8)
            data[:, :cols] = q.codes
            scale = scales
            if padded != cols:
                post.append(("slice", (rows, cols)))
            if layout == TRANSPOSE:
                post.append(("transpose", [1, 0]))
            else:
                if tuple(q.shape) != (rows, cols):
                    post.append(("reshape", q.shape))
                if layout == SWAP01:
                    post.append(("transpose", [1, 0, *range(2, len(q.shape))]))
        data = np.ascontiguousarray(data)
        scale = np.ascontiguousarray(scale.astype(scale_dtype))
        self.bits = data.size * q.bits + scale.size * 8 * scale.dtype.itemsize
        self.root = f"{self.name}_q{q.bits}"
        var = mb.constexpr_blockwise_shift_scale(
            data=data.astype(code_dtype), scale=scale, before_op=op, name=self.root
        )
        for kind, arg in post:
            if kind == "slice":
                var = mb.slice_by_size(
                    x=var,
                    begin=np.zeros(2, np.int32),
                    size=np.asarray(arg, np.int32),
                    before_op=op,
                    name=f"{self.name}_unpad",
                )
            elif kind == "reshape":
                var = mb.reshape(
                    x=var, shape=np.asarray(arg, np.int32), before_op=op, name=f"{self.name}_shape"
                )
            else:
                var = mb.transpose(
                    x=var, perm=np.asarray(arg, np.int32), before_op=op, name=f"{self.name}_perm"
                )
        return self._finish(var, cast_after, const_shape)

    def affine_int8(self, q: QuantizedTensor, layout: str, const_shape: tuple[int, ...], fp16: bool) -> Any:
        """iOS16 ``constexpr_affine_dequantize``: int8 per-channel only (checked by the caller)."""
        mb, op = self.mb, self.op
        scales = q.scales.astype(np.float32).reshape(-1)
        cast_after = _needs_cast(scales, fp16, self.round_fp16_scales)
        scales = scales.astype(np.float16 if fp16 and not cast_after else np.float32)
        data = q.codes.reshape(q.shape)
        axis = 0
        if layout == TRANSPOSE:
            data, axis = q.codes.T, 1
        elif layout == SWAP01:
            data, axis = np.swapaxes(data, 0, 1), 1
        self.bits = data.size * 8 + scales.size * 8 * scales.dtype.itemsize
        self.root = f"{self.name}_q8"
        var = mb.constexpr_affine_dequantize(
            quantized_data=np.ascontiguousarray(data.astype(np.int8)),
            zero_point=np.int8(0),
            scale=scales,
            axis=axis,
            before_op=op,
            name=self.root,
        )
        return self._finish(var, cast_after, const_shape)


def _check_target(program: Any, weights: Mapping[str, Stored]) -> bool:
    ios18 = _target_ge_ios18(program)
    if not ios18:
        blocked = sorted(k for k, v in weights.items() if isinstance(v, QuantizedTensor) and _is_blockwise(v))
        if blocked:
            version = program.functions["main"].opset_version
            shown = ", ".join(blocked[:3]) + (" …" if len(blocked) > 3 else "")
            raise BadInput(
                f"coreml: {TARGET_MESSAGE} (program opset {getattr(version, 'name', version)}; "
                f"blockwise weights: {shown})"
            )
    return ios18


def _encoding_name(q: QuantizedTensor, ios18: bool) -> str:
    if not ios18:
        return "constexpr_affine_dequantize int8 per-channel"
    granularity = "per-channel" if not _is_blockwise(q) else f"block {q.block_size}"
    return f"constexpr_blockwise_shift_scale int{q.bits} {granularity}"


def compress_program(
    program: Any,
    weights: Mapping[str, Stored],
    state_dict: Mapping[str, Any],
    *,
    fp16_scales: Literal["exact", "round"] = "exact",
    const_weights: Literal["dense", "computed"] = "dense",
) -> CompressionResult:
    """Replace, in place, each const op holding a model weight by that weight's stored encoding.

    `program` is a ``coremltools.converters.mil.Program`` (e.g. from ``ct.convert(...,
    convert_to="milinternal")``); `weights` is ``QuantizedModel.weights``; `state_dict` holds the fp32
    values the program was traced from (torch tensors or numpy arrays), which is how const ops are
    recognised. Raises `BadInput` when the program's deployment target cannot hold blockwise weights.

    ``fp16_scales`` matters only for fp16 programs and scales that are not fp16-exact (int8):
    ``"exact"`` keeps fp32 scales plus a runtime ``cast``, so the weight is
    ``dequantize().astype(float16)``; ``"round"`` stores fp16 scales (a pure constexpr, Neural Engine
    friendly), and the weight is ``codes * fp16(scale)``, no longer identical to ONNX/GGUF.

    ``const_weights`` is for blockwise weights whose blocks need runtime layout ops but feed an op that
    Core ML specifies with a const weight (``conv_transpose``, dilated ``conv``): ``"dense"`` stores
    the exact dequantized values uncompressed (valid by the spec; reported in ``unplaced``),
    ``"computed"`` emits the layout ops anyway (compressed, but relies on Core ML treating
    reshape-of-constexpr as constant, which cannot be checked on Linux).
    """
    if fp16_scales not in ("exact", "round"):
        raise BadInput(f"coreml: fp16_scales must be 'exact' or 'round', got {fp16_scales!r}")
    if const_weights not in ("dense", "computed"):
        raise BadInput(f"coreml: const_weights must be 'dense' or 'computed', got {const_weights!r}")
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.scope import ScopeInfo, ScopeSource

    ios18 = _check_target(program, weights)
    # Like a coremltools graph pass: ops built inside this scope inherit the replaced const's scope
    # info (torch module names), which the torch frontend's programs require of every op.
    with mb.scope(ScopeInfo(source=ScopeSource.COREMLTOOLS_GRAPH_PASS, data=[PASS_NAME])):
        return _compress(
            program, weights, state_dict, ios18, fp16_scales == "round", const_weights == "dense"
        )


def _compress(
    program: Any,
    weights: Mapping[str, Stored],
    state_dict: Mapping[str, Any],
    ios18: bool,
    round16: bool,
    dense: bool,
) -> CompressionResult:
    index = WeightIndex(state_dict, weights)
    result = CompressionResult()
    computed = False
    found: dict[str, list[tuple[Any, str]]] = {}
    for op in const_ops(program.functions["main"]):
        match = index.lookup(op.outputs[0].val, op.name)
        if match is not None:
            found.setdefault(match[0], []).append((op, match[1]))

    for name, stored in weights.items():
        if name not in found:
            continue
        if isinstance(stored, QuantizedTensor):
            if stored.offsets is not None:
                result.unplaced.append(
                    _unplaced(name, stored, "asymmetric offsets have no exact Core ML encoding")
                )
                continue
            if not _place_quantized(name, stored, found[name], ios18, result, round16, dense):
                computed = True
        elif _keep_float(name, np.asarray(stored), found[name], result):
            computed = True

    for name, stored in weights.items():
        if isinstance(stored, QuantizedTensor) and name not in found:
            result.unplaced.append(_unplaced(name, stored, "not found as a const op in the Core ML program"))
    if computed:
        from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

        # `linear` needs a const weight; coremltools' own pass turns those that lost it into matmul
        PASS_REGISTRY["common::expand_dynamic_linear"](program)
    return result


def _unplaced(name: str, q: QuantizedTensor, reason: str) -> dict[str, str]:
    return {"name": name, "requested": f"int{q.bits}", "stored": "absent", "reason": reason}


def _replace(op: Any, new_var: Any) -> None:
    block = op.enclosing_block
    block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new_var)
    block.remove_ops([op])


def _needs_cast(scales: np.ndarray, fp16: bool, round_fp16_scales: bool) -> bool:
    """fp32 scales + a cast op, so an fp16 weight is ``fp16(codes * scale)`` and not
    ``codes * fp16(scale)`` (unless the caller chose rounded fp16 scales)."""
    return fp16 and not round_fp16_scales and not _fp16_exact(scales.astype(np.float32))


def _emits_const(
    q: QuantizedTensor, layout: str, const_shape: tuple[int, ...], fp16: bool, ios18: bool, round16: bool
) -> bool:
    """Whether the encoding is a constexpr op alone (a compile-time constant for Core ML), i.e. no
    slice / reshape / transpose / cast op runs on the weight at runtime."""
    if _needs_cast(q.scales, fp16, round16):
        return False
    if ios18 and _direct_blocks(q.shape, q.block_size, q.cols) is None:
        return False
    if layout == TRANSPOSE:
        shape: tuple[int, ...] = (q.cols, q.rows)
    elif layout == SWAP01:
        shape = (q.shape[1], q.shape[0], *q.shape[2:])
    else:
        shape = tuple(q.shape)
    return shape == tuple(const_shape)


def _const_only_consumer(op: Any) -> str | None:
    """Why a consumer of the weight cannot take a computed (non-const) weight, if it cannot.

    Core ML requires a const weight for ``conv_transpose`` and for dilated ``conv``; ``linear`` as
    well, but that one is rewritten to ``matmul`` by coremltools' ``expand_dynamic_linear`` (run
    below), exactly as coremltools does for any linear whose weight is computed."""
    for child in op.outputs[0].child_ops:
        if child.op_type == "conv_transpose":
            return "conv_transpose"
        dilations = child.dilations if child.op_type == "conv" else None
        if dilations is not None and np.any(np.asarray(dilations.val) != 1):
            return "dilated conv"
    return None


def _place_quantized(
    name: str,
    q: QuantizedTensor,
    ops: list[tuple[Any, str]],
    ios18: bool,
    result: CompressionResult,
    round16: bool,
    dense: bool,
) -> bool:
    """Place `q` for every const op holding it; False when a runtime op feeds a `linear` weight."""
    from coremltools.converters.mil import Builder as mb

    plans = []
    for op, layout in ops:
        const_shape = tuple(op.outputs[0].shape)
        fp16 = op.outputs[0].val.dtype == np.float16
        direct = _emits_const(q, layout, const_shape, fp16, ios18, round16)
        blocker = None if direct or not dense else _const_only_consumer(op)
        plans.append((op, layout, const_shape, fp16, direct, blocker))

    blocked = next((p for p in plans if p[5] is not None), None)
    if blocked is not None:
        # Exact values, uncompressed: the only encoding Core ML accepts there for these blocks.
        new_ops = []
        for op, layout, const_shape, fp16, _, _ in plans:
            value = (
                _in_layout(q.dequantize(), layout)
                .reshape(const_shape)
                .astype(np.float16 if fp16 else np.float32)
            )
            with op.enclosing_block:
                var = mb.const(val=value, before_op=op, name=mil_name(f"{op.name}_dequantized"))
            _replace(op, var)
            new_ops.append(var.op.name)
        itemsize = 2 if plans[0][3] else 4
        result.dense[name] = PlacedWeight(
            name=name,
            const_ops=tuple(p[0].name for p in plans),
            new_ops=tuple(new_ops),
            layout=plans[0][1],
            encoding=f"const fp{8 * itemsize} (dequantized)",
            stored_bits=int(np.prod(q.shape)) * 8 * itemsize,
            elements=int(np.prod(q.shape)),
        )
        result.unplaced.append(
            {
                "name": name,
                "requested": f"int{q.bits}",
                "stored": f"fp{8 * itemsize}",
                "reason": f"int{q.bits} blocks of {q.block_size} cross the kernel axes of a {blocked[5]}, "
                "which needs a const weight in Core ML; stored as its exact dequantized values",
            }
        )
        return True

    bits = 0
    new_ops = []
    all_direct = True
    for op, layout, const_shape, fp16, direct, _ in plans:
        with op.enclosing_block:
            emitter = _Emitter(op, op.name, round_fp16_scales=round16)
            if ios18:
                var = emitter.blockwise(q, layout, const_shape, fp16)
            else:
                var = emitter.affine_int8(q, layout, const_shape, fp16)
        _replace(op, var)
        bits = emitter.bits
        new_ops.append(emitter.root)
        all_direct = all_direct and direct
    result.placed[name] = PlacedWeight(
        name=name,
        const_ops=tuple(p[0].name for p in plans),
        new_ops=tuple(new_ops),
        layout=plans[0][1],
        encoding=_encoding_name(q, ios18) + ("" if all_direct else " + runtime layout ops"),
        stored_bits=bits,
        elements=int(np.prod(q.shape)),
    )
    return all_direct


def _in_layout(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == TRANSPOSE:
        return value.T
    if layout == SWAP01:
        return np.swapaxes(value, 0, 1)
    return value


def _keep_float(name: str, stored: np.ndarray, ops: list[tuple[Any, str]], result: CompressionResult) -> bool:
    """Store a weight the plan kept as a float at its stored precision; True if a cast now computes it.

    An fp16-stored weight in an fp32 program is an fp16 const plus a `cast` to fp32 (as ONNX stores
    it), half the bytes of the fp32 const coremltools would write, with identical values; where the
    consumer needs a const weight (dilated conv, conv_transpose) it stays an fp32 const."""
    from coremltools.converters.mil import Builder as mb

    itemsize = 4
    new_ops = []
    computed = False
    for op, layout in ops:
        current = op.outputs[0].val
        half = stored.dtype == np.float16 and current.dtype == np.float32 and _const_only_consumer(op) is None
        value = _in_layout(stored.astype(np.float16 if half else current.dtype), layout)
        value = np.ascontiguousarray(value).reshape(current.shape)
        itemsize = value.dtype.itemsize
        if not half and np.array_equal(value, current):
            new_ops.append(op.name)
            continue
        with op.enclosing_block:
            var = mb.const(val=value, before_op=op, name=mil_name(f"{op.name}_stored"))
            if half:
                var = mb.cast(x=var, dtype="fp32", before_op=op, name=mil_name(f"{op.name}_fp32"))
                computed = True
        _replace(op, var)
        new_ops.append(var.op.name)
    elements = int(stored.size)
    result.kept[name] = PlacedWeight(
        name=name,
        const_ops=tuple(op.name for op, _ in ops),
        new_ops=tuple(new_ops),
        layout=ops[0][1],
        encoding=f"const fp{8 * itemsize}" + (" + cast" if computed else ""),
        stored_bits=elements * 8 * itemsize,
        elements=elements,
    )
    return computed


def unplaced_across(
    weights: Mapping[str, Stored], results: Iterable[CompressionResult]
) -> list[dict[str, str]]:
    """The manifest's skipped rows for a model exported as several Core ML graphs.

    Each graph holds only some weights, so "not found" in one graph means nothing by itself: a
    quantized weight is skipped only when no graph placed it. A weight stored dense (exact values,
    uncompressed) in some graph and placed in none keeps that graph's reason."""
    results = list(results)
    placed = set().union(*(r.placed for r in results)) if results else set()
    reasons: dict[str, dict[str, str]] = {}
    for result in results:
        for row in result.unplaced:
            if row["stored"] != "absent" or row["name"] not in reasons:
                reasons[row["name"]] = row
    rows = []
    for name, value in weights.items():
        if not isinstance(value, QuantizedTensor) or name in placed:
            continue
        rows.append(
            reasons.get(name) or _unplaced(name, value, "not found as a const op in any Core ML graph")
        )
    return rows
