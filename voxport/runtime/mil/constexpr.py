"""Decode Core ML's compressed-weight ops (`constexpr_*`) into dense numpy arrays.

Core ML stores quantized, palettized and sparse weights as `constexpr_*` ops that the device expands
at load time. Running the program on Linux needs the same expansion, and checking it separately from
the rest of the graph is what tells a quantization bug from an interpreter bug.

The milproto loader already unpacks sub-byte *typed* tensors (int4, uint4, uint1, ...) to one value
per element; the iOS16 ops instead carry raw bit-packed `uint8` bytes, unpacked here LSB-first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from voxport.errors import BadInput

#: MIL dtype names as used in `cast` / `constexpr_cast` string attributes
MIL_DTYPES: dict[str, np.dtype] = {
    "fp16": np.dtype(np.float16),
    "fp32": np.dtype(np.float32),
    "fp64": np.dtype(np.float64),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "uint16": np.dtype(np.uint16),
    "int32": np.dtype(np.int32),
    "uint32": np.dtype(np.uint32),
    "int64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}


def _out_dtype(reference: np.ndarray) -> np.dtype:
    dtype = np.asarray(reference).dtype
    return dtype if dtype.kind == "f" else np.dtype(np.float32)


def blockwise_shift_scale(
    data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None
) -> np.ndarray:
    """iOS18 `constexpr_blockwise_shift_scale`: out = scale * (data - offset), blockwise.

    The block size along each axis is implied: data.shape[i] / scale.shape[i]. Scales are
    broadcast by repetition (not numpy broadcasting) since a block may span many elements.
    """
    data = np.asarray(data)
    scale = np.asarray(scale)
    if data.ndim != scale.ndim:
        raise BadInput(f"constexpr_blockwise_shift_scale: data rank {data.ndim} != scale rank {scale.ndim}")
    blocks = []
    for size, groups in zip(data.shape, scale.shape, strict=True):
        if groups == 0 or size % groups:
            raise BadInput(
                f"constexpr_blockwise_shift_scale: {size} elements not divisible by {groups} blocks"
            )
        blocks.append(size // groups)

    def expand(t: np.ndarray) -> np.ndarray:
        for axis, block in enumerate(blocks):
            if block > 1:
                t = np.repeat(t, block, axis=axis)
        return t

    values = data.astype(np.float32)
    if offset is not None:
        values = values - expand(np.asarray(offset).astype(np.float32))
    out = values * expand(scale.astype(np.float32))
    return out.astype(_out_dtype(scale))


def lut_to_dense(indices: np.ndarray, lut: np.ndarray, vector_axis: int | None = None) -> np.ndarray:
    """iOS18 `constexpr_lut_to_dense`: per-block palettes, optionally vector palettes.

    indices [*S] (already one value per element); lut [*G, P, V] with S[i] divisible by G[i]: the
    palette for an element is lut[idx // (S / G)], and a vector of V values is laid along
    `vector_axis`.
    """
    indices = np.asarray(indices).astype(np.int64)
    lut = np.asarray(lut)
    rank = indices.ndim
    if lut.ndim != rank + 2:
        raise BadInput(f"constexpr_lut_to_dense: lut rank {lut.ndim} should be indices rank {rank} + 2")
    grid = []
    for axis in range(rank):
        size, groups = indices.shape[axis], lut.shape[axis]
        if size % groups:
            raise BadInput(
                f"constexpr_lut_to_dense: axis {axis} size {size} not divisible by {groups} palettes"
            )
        shape = [1] * rank
        shape[axis] = size
        grid.append((np.arange(size) // (size // groups)).reshape(shape))
    out = lut[(*grid, indices)]  # [*S, V]
    vector = lut.shape[-1]
    if vector == 1:
        return out[..., 0]
    if vector_axis is None:
        raise BadInput("constexpr_lut_to_dense: vector palettes need vector_axis")
    axis = int(vector_axis) % rank
    out = np.moveaxis(out, -1, axis + 1)
    new_shape = list(indices.shape)
    new_shape[axis] *= vector
    return out.reshape(new_shape)


def unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Unsigned values of `nbits` each, packed LSB-first across bytes (the iOS16 layout)."""
    bits = np.unpackbits(np.asarray(packed, np.uint8).ravel(), bitorder="little")
    if bits.size < nbits * count:
        raise BadInput(f"packed data holds {bits.size // nbits} values of {nbits} bits, need {count}")
    values = bits[: nbits * count].reshape(count, nbits).astype(np.int64)
    return (values << np.arange(nbits)).sum(axis=1)


def lut_to_dense_ios16(indices: np.ndarray, lut: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """iOS16 `constexpr_lut_to_dense`: a single palette, indices bit-packed into uint8 bytes."""
    lut = np.asarray(lut).ravel()
    nbits = int(np.log2(lut.size))
    if 2**nbits != lut.size:
        raise BadInput(f"constexpr_lut_to_dense: palette size {lut.size} is not a power of two")
    count = int(np.prod(shape))
    return lut[unpack_bits(indices, nbits, count)].reshape([int(s) for s in shape])


def affine_dequantize(
    quantized_data: np.ndarray, zero_point: np.ndarray, scale: np.ndarray, axis: int
) -> np.ndarray:
    """iOS16 `constexpr_affine_dequantize`: scale * (q - zero_point), scalars or vectors along `axis`."""
    q = np.asarray(quantized_data)
    axis = int(axis) % q.ndim

    def along_axis(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t).astype(np.float32)
        if t.ndim == 0 or t.size == 1:
            return t.reshape(())
        shape = [1] * q.ndim
        shape[axis] = t.size
        return t.reshape(shape)

    out = (q.astype(np.float32) - along_axis(zero_point)) * along_axis(scale)
    return out.astype(_out_dtype(scale))


def cast(source_val: np.ndarray, output_dtype: str) -> np.ndarray:
    """`constexpr_cast`: fp16 storage widened to the compute dtype."""
    if output_dtype not in MIL_DTYPES:
        raise BadInput(f"constexpr_cast: unknown output dtype {output_dtype!r}")
    return np.asarray(source_val).astype(MIL_DTYPES[output_dtype])


def sparse_to_dense(
    nonzero_data: np.ndarray, mask: np.ndarray, shape: Sequence[int] | None = None
) -> np.ndarray:
    """`constexpr_sparse_to_dense`: iOS18 form (mask is one 0/1 per element, shaped like the output)
    when `shape` is None; iOS16 form (mask bit-packed LSB-first, flat, plus `shape`) otherwise."""
    nonzero_data = np.asarray(nonzero_data)
    if shape is None:
        keep = np.asarray(mask).astype(bool)
    else:
        count = int(np.prod(shape))
        keep = unpack_bits(mask, 1, count).astype(bool).reshape([int(s) for s in shape])
    if int(keep.sum()) != nonzero_data.size:
        raise BadInput(
            f"constexpr_sparse_to_dense: mask has {int(keep.sum())} set bits, data {nonzero_data.size}"
        )
    out = np.zeros(keep.shape, nonzero_data.dtype)
    out[keep] = nonzero_data.ravel()
    return out


def _lut(args: Mapping[str, Any]) -> np.ndarray:
    if args.get("shape") is not None:
        return lut_to_dense_ios16(args["indices"], args["lut"], args["shape"])
    return lut_to_dense(args["indices"], args["lut"], args.get("vector_axis"))


#: op type -> decoder over the op's named (already materialized) inputs
DECODERS: dict[str, Callable[[Mapping[str, Any]], np.ndarray]] = {
    "constexpr_blockwise_shift_scale": lambda a: blockwise_shift_scale(
        a["data"], a["scale"], a.get("offset")
    ),
    "constexpr_lut_to_dense": _lut,
    "constexpr_affine_dequantize": lambda a: affine_dequantize(
        a["quantized_data"], a["zero_point"], a["scale"], a["axis"]
    ),
    "constexpr_cast": lambda a: cast(a["source_val"], str(a["output_dtype"])),
    "constexpr_sparse_to_dense": lambda a: sparse_to_dense(a["nonzero_data"], a["mask"], a.get("shape")),
}


def decode(op_type: str, args: Mapping[str, Any]) -> np.ndarray:
    """Dense value of one constexpr op; BadInput for the forms not decoded here."""
    decoder = DECODERS.get(op_type)
    if decoder is None:
        raise BadInput(
            f"{op_type}: this compressed-weight op is not supported by the MIL interpreter "
            f"(supported: {', '.join(sorted(DECODERS))})"
        )
    return decoder(args)
