"""Write a family model's stored weights as one GGUF file, streamed tensor by tensor.

The layout (metadata keys, names, 2-D storage, type mapping) is described in docs/gguf-layout.md.
The write is two-pass, as gguf-py's writer allows: first every tensor's name, GGML type, shape and
byte size is *planned* from shapes alone (`plan_tensors`), the header, metadata and tensor-info table
are written from that plan, and then each tensor is encoded and written on its own (`encode_tensor`
followed by `GGUFWriter.write_tensor_data`), so at most one encoded tensor exists at a time. The
writer never calls `add_tensor` / `write_tensors_to_file`, which keep every tensor until the end.
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType
from gguf import quants as gguf_quants

from voxport import __version__
from voxport.errors import BadInput
from voxport.export.gguf.general import general_metadata
from voxport.export.gguf.names import NAMING_VERSION, to_gguf
from voxport.export.gguf.types import K_TYPES, ggml_types
from voxport.families.base import FamilyModel
from voxport.io import atomic_path
from voxport.quantize.stage import QuantizedModel
from voxport.quantize.tensor import QuantizedTensor

T = GGMLQuantizationType

#: GGML types a `types` override may name (export/gguf/types.py), and who encodes them
OVERRIDE_TYPES = dict(ggml_types())
GGUF_PY_TYPES = {name: t for name, t in OVERRIDE_TYPES.items() if name not in K_TYPES}
K_TYPE_NAMES = {name: OVERRIDE_TYPES[name] for name in K_TYPES}

_INT_TYPES = {
    np.dtype(np.int8): T.I8,
    np.dtype(np.int16): T.I16,
    np.dtype(np.int32): T.I32,
    np.dtype(np.int64): T.I64,
}

#: general.file_type for the dominant (by element count) type of the >= 2-D tensors
_FILE_TYPES = {
    T.F32: LlamaFileType.ALL_F32,
    T.F16: LlamaFileType.MOSTLY_F16,
    T.BF16: LlamaFileType.MOSTLY_BF16,
    T.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    T.Q4_0: LlamaFileType.MOSTLY_Q4_0,
    T.Q4_1: LlamaFileType.MOSTLY_Q4_1,
    T.Q5_0: LlamaFileType.MOSTLY_Q5_0,
    T.Q5_1: LlamaFileType.MOSTLY_Q5_1,
    T.Q4_K: LlamaFileType.MOSTLY_Q4_K_M,
    T.Q5_K: LlamaFileType.MOSTLY_Q5_K_M,
    T.Q6_K: LlamaFileType.MOSTLY_Q6_K,
}

#: keys voxport itself must control; `metadata` may not set them
RESERVED_KEYS = frozenset({"general.architecture", "voxport.naming_version", "voxport.shapes"})
GGUF_VERSION_KEY = "voxport.version"


@dataclass(frozen=True)
class GgufWritten:
    """What `write_gguf` wrote: the file, its tensor count and GGML types (by name), the bits per
    weight over every stored tensor, general.file_type's name, and the tensors not stored in the
    type asked for (with the reason)."""

    path: Path
    bytes: int
    tensors: int
    tensor_types: Counter[str]
    bits_per_weight: float
    file_type: str
    fallbacks: list[dict[str, str]]


@dataclass(frozen=True)
class TensorPlan:
    """How one weight is stored: decided from shapes and the quantized model, before any encoding."""

    name: str  # voxport name
    gguf_name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # original shape
    stored_shape: tuple[int, ...]  # numpy order: (rows, cols) for >= 2-D, else the shape
    #: where the bytes come from: "stored" (the QuantizedModel's array as is), "codes" (Q4_0 / Q8_0
    #: packed from the int4 / blocked int8 codes and scales, bit-exact), "dequantized" (the
    #: QuantizedTensor's dequantized values, for fallbacks) or "fp32" (encoded from the model's fp32
    #: weight)
    source: str

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.stored_shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.ggml_type]
        return self.n_elements // block * size


def storage_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """>= 2-D weights are stored 2-D, (shape[0], prod(shape[1:])): the QuantizedTensor layout."""
    if len(shape) < 2:
        return tuple(shape)
    return (int(shape[0]), int(np.prod(shape[1:], dtype=np.int64)))


def _override(name: str, gguf_name: str, types: Mapping[str, str]) -> str | None:
    """The last pattern (in the mapping's order) matching the voxport or the GGUF name wins."""
    chosen = None
    for pattern, type_name in types.items():
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(gguf_name, pattern):
            chosen = type_name
    return chosen


def _check_types(types: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for pattern, type_name in types.items():
        key = str(type_name).upper()
        if key not in OVERRIDE_TYPES:
            raise BadInput(
                f"gguf types: '{pattern}': unknown GGML type '{type_name}' "
                f"(allowed: {', '.join(OVERRIDE_TYPES)})"
            )
        if key in K_TYPE_NAMES:
            try:
                from voxport.export.gguf import kquants  # noqa: F401
            except ImportError:
                raise BadInput(
                    f"gguf types: '{pattern}': {key} needs voxport.export.gguf.kquants (not installed)"
                ) from None
        out[pattern] = key
    return out


def _fits(stored_shape: tuple[int, ...], ggml_type: GGMLQuantizationType) -> bool:
    return stored_shape[-1] % GGML_QUANT_SIZES[ggml_type][0] == 0


#: a K-quant's 256-wide super-block does not fit many speech-model rows (192, 384, 80·k): store
#: those in the nearest 32-block type of at least the same quality, as llama.cpp's quantizer does,
#: rather than in F16 (which made a "Q4_K" joe larger than its Q8_0 one)
KQUANT_FALLBACKS: dict[str, str] = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def plan_tensors(
    model: FamilyModel,
    qm: QuantizedModel,
    types: Mapping[str, str] | None = None,
    *,
    state: Mapping[str, Any] | None = None,
    fallback_type: str = "F16",
) -> tuple[list[TensorPlan], list[dict[str, str]]]:
    """Every tensor's GGUF name, type, stored shape and source, plus the fallbacks taken.

    A weight whose row length does not fit its GGML type's block is stored as `fallback_type`
    (F16 by default, F32 to keep a QuantizedTensor's dequantized values exactly)."""
    if fallback_type not in ("F16", "F32"):
        raise BadInput(f"gguf: fallback type must be F16 or F32, got {fallback_type!r}")
    state = model.state_dict() if state is None else state
    missing = sorted(set(state) - set(qm.weights))
    extra = sorted(set(qm.weights) - set(state))
    if missing or extra:
        raise BadInput(
            "gguf: the quantized weights do not match the model "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'})"
        )
    types = _check_types(types or {})
    quantizable = model.quantizable()
    plans: list[TensorPlan] = []
    fallbacks: list[dict[str, str]] = []
    for name in state:
        value = qm.weights[name]
        try:
            gguf_name = to_gguf(name)
        except ValueError as exc:
            raise BadInput(f"gguf: {exc}") from None
        shape = tuple(
            int(d) for d in (value.shape if isinstance(value, QuantizedTensor) else np.shape(value))
        )
        plans.append(
            plan_tensor(
                name,
                gguf_name,
                value,
                shape,
                storage_shape(shape),
                types=types,
                quantizable=name in quantizable,
                fallback_type=fallback_type,
                fallbacks=fallbacks,
            )
        )
    return plans, fallbacks


def plan_tensor(
    name: str,
    gguf_name: str,
    value: Any,
    shape: tuple[int, ...],
    stored: tuple[int, ...],
    *,
    types: Mapping[str, str],
    quantizable: bool,
    fallback_type: str,
    fallbacks: list[dict[str, str]],
) -> TensorPlan:
    """One tensor's plan (type, byte source) from its stored value; fallbacks taken are appended.

    Shared by the one-file writer and the multi-file layouts (export/gguf/split.py), so a weight gets
    the same GGML type whichever layout carries it. `types` must come from `_check_types`."""
    fb_type = GGUF_PY_TYPES[fallback_type]

    def fallback(requested: str, reason: str) -> None:
        fallbacks.append(
            {
                "name": name,
                "gguf_name": gguf_name,
                "requested": requested,
                "stored": fallback_type,
                "reason": reason,
            }
        )

    requested = _override(name, gguf_name, types) if len(shape) >= 2 and quantizable else None
    if requested is not None:
        ggml_type = OVERRIDE_TYPES[requested]
        if _fits(stored, ggml_type):
            exact = isinstance(value, QuantizedTensor) and _codes_exact(value, ggml_type)
            source = "codes" if exact else "fp32"
            return TensorPlan(name, gguf_name, ggml_type, shape, stored, source)
        block = GGML_QUANT_SIZES[ggml_type][0]
        reason = f"row length {stored[-1]} is not a multiple of the {requested} block {block}"
        near = KQUANT_FALLBACKS.get(requested)
        if near is not None and _fits(stored, OVERRIDE_TYPES[near]):
            fallbacks.append(
                {
                    "name": name,
                    "gguf_name": gguf_name,
                    "requested": requested,
                    "stored": near,
                    "reason": reason,
                }
            )
            return TensorPlan(name, gguf_name, OVERRIDE_TYPES[near], shape, stored, "fp32")
        fallback(requested, reason)
        return TensorPlan(name, gguf_name, fb_type, shape, stored, "fp32")
    if isinstance(value, QuantizedTensor):
        if value.bits == 4 and len(stored) == 2 and _q4_0_exact(value):
            return TensorPlan(name, gguf_name, T.Q4_0, shape, stored, "codes")
        if value.bits == 4 and _fits(stored, T.Q4_0):
            fallbacks.append(
                {
                    "name": name,
                    "gguf_name": gguf_name,
                    "requested": "int4",
                    "stored": "Q4_0",
                    "reason": "int4 codes are not Q4_0-compatible (block size, offsets or scales); "
                    "re-quantized from fp32 by gguf-py",
                }
            )
            return TensorPlan(name, gguf_name, T.Q4_0, shape, stored, "fp32")
        if value.bits == 8 and len(stored) == 2 and _q8_0_exact(value):
            return TensorPlan(name, gguf_name, T.Q8_0, shape, stored, "codes")
        if value.bits == 8 and _fits(stored, T.Q8_0):
            return TensorPlan(name, gguf_name, T.Q8_0, shape, stored, "fp32")
        target = "Q4_0" if value.bits == 4 else "Q8_0"
        fallback(f"int{value.bits}", f"row length {stored[-1]} is not a multiple of the {target} block 32")
        return TensorPlan(name, gguf_name, fb_type, shape, stored, "dequantized")
    array = np.asarray(value)
    if array.dtype == np.float16:
        return TensorPlan(name, gguf_name, T.F16, shape, stored, "stored")
    if array.dtype in _INT_TYPES:
        return TensorPlan(name, gguf_name, _INT_TYPES[array.dtype], shape, stored, "stored")
    return TensorPlan(name, gguf_name, T.F32, shape, stored, "stored")


def _q4_0_exact(qt: QuantizedTensor) -> bool:
    """True when Q4_0 reproduces `qt.dequantize()` bit for bit: symmetric, blocks of 32 filling every
    row, codes in [-8, 7] and scales exactly representable in float16."""
    if qt.bits != 4 or qt.offsets is not None or qt.block_size != 32 or qt.cols % 32 != 0:
        return False
    if qt.codes.min(initial=0) < -8 or qt.codes.max(initial=0) > 7:
        return False
    scales = qt.scales.astype(np.float32)
    with np.errstate(over="ignore"):
        return bool(np.array_equal(scales.astype(np.float16).astype(np.float32), scales))


def _q8_0_exact(qt: QuantizedTensor) -> bool:
    """True when Q8_0 reproduces `qt.dequantize()` bit for bit: int8 in blocks of 32 filling every row
    (`quantize.int8_block_size: 32`), symmetric, scales exactly representable in float16. Per-channel
    int8 is not: its row scale is float32, so Q8_0 re-quantizes it from fp32 in blocks of its own."""
    if qt.bits != 8 or qt.offsets is not None or qt.block_size != 32 or qt.cols % 32 != 0:
        return False
    scales = qt.scales.astype(np.float32)
    with np.errstate(over="ignore"):
        return bool(np.array_equal(scales.astype(np.float16).astype(np.float32), scales))


def _codes_exact(qt: QuantizedTensor, ggml_type: GGMLQuantizationType) -> bool:
    """True when `ggml_type` can be packed from `qt`'s codes and scales without re-quantizing."""
    if ggml_type == T.Q4_0:
        return _q4_0_exact(qt)
    if ggml_type == T.Q8_0:
        return _q8_0_exact(qt)
    return False


def pack_q8_0(qt: QuantizedTensor) -> np.ndarray:
    """GGUF Q8_0 bytes (rows, cols / 32 * 34) from int8 codes in blocks of 32 and fp16-exact scales, no
    re-quantization: per block fp16 d, then the 32 codes as int8 (ggml's `block_q8_0`)."""
    rows, cols = qt.codes.shape
    n_blocks = cols // 32
    qs = qt.codes.astype(np.int8).reshape(rows * n_blocks, 32).view(np.uint8)
    d = qt.scales.astype(np.float16).reshape(rows * n_blocks, 1).view(np.uint8)
    return np.concatenate([d, qs], axis=1).reshape(rows, n_blocks * 34)


def pack_q4_0(qt: QuantizedTensor) -> np.ndarray:
    """GGUF Q4_0 bytes (rows, cols / 32 * 18) from int4 codes and fp16-exact scales, no re-quantization.

    Per block: fp16 d, then 16 bytes; byte j holds q[j] (low nibble) and q[j + 16] (high nibble),
    q = code + 8 — the layout of gguf-py's `Q4_0.quantize_blocks` and ggml's `block_q4_0`."""
    rows, cols = qt.codes.shape
    n_blocks = cols // 32
    q = (qt.codes.astype(np.int16) + 8).astype(np.uint8).reshape(rows * n_blocks, 2, 16)
    packed = q[:, 0, :] | (q[:, 1, :] << np.uint8(4))
    d = qt.scales.astype(np.float16).reshape(rows * n_blocks, 1).view(np.uint8)
    return np.concatenate([d, packed], axis=1).reshape(rows, n_blocks * 18)


def encode_tensor(plan: TensorPlan, value: Any, fp32: Any) -> np.ndarray:
    """The bytes of one tensor in its planned type (only this tensor is materialised)."""
    if plan.source == "codes":
        return pack_q8_0(value) if plan.ggml_type == T.Q8_0 else pack_q4_0(value)
    if plan.source == "dequantized":
        return np.ascontiguousarray(
            gguf_quants.quantize(value.dequantize().reshape(plan.stored_shape), plan.ggml_type)
        )
    if plan.source == "stored":
        array = np.asarray(value)
        if plan.ggml_type == T.F32:
            array = array.astype(np.float32, copy=False)
        elif plan.ggml_type == T.F16:  # a streamed weight arrives as float32 whatever its plan
            array = array.astype(np.float16, copy=False)
        return np.ascontiguousarray(array.reshape(plan.stored_shape))
    weight = np.ascontiguousarray(_numpy(fp32), dtype=np.float32).reshape(plan.stored_shape)
    if plan.ggml_type in K_TYPE_NAMES.values():
        from voxport.export.gguf.kquants import quantize_k

        return quantize_k(weight, plan.ggml_type.name)
    return np.ascontiguousarray(gguf_quants.quantize(weight, plan.ggml_type))


def _numpy(tensor: Any) -> np.ndarray:
    if hasattr(tensor, "detach"):
        return tensor.detach().to("cpu").float().numpy()
    return np.asarray(tensor)


def _file_type(plans: list[TensorPlan]) -> int:
    weights: Counter[GGMLQuantizationType] = Counter()
    for p in plans:
        if len(p.shape) >= 2:
            weights[p.ggml_type] += p.n_elements
    quantized = {t: n for t, n in weights.items() if t not in (T.F32, T.F16, T.BF16)}
    pool = quantized or weights
    if not pool:
        return int(LlamaFileType.ALL_F32)
    dominant = max(pool, key=lambda t: pool[t])
    return int(_FILE_TYPES.get(dominant, LlamaFileType.ALL_F32))


def _add_value(writer: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, (int, np.integer)):
        value = int(value)
        if 0 <= value < 2**32:
            writer.add_uint32(key, value)
        else:
            writer.add_int64(key, value)
    elif isinstance(value, (float, np.floating)):
        writer.add_float32(key, float(value))
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (bytes, bytearray)):
        writer.add_key_value(key, list(bytes(value)), GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT8)
    elif value is None:
        return
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        writer.add_array(key, value)  # general.languages, general.tags: arrays of strings per the spec
    else:
        writer.add_string(key, json.dumps(value, sort_keys=True, default=str))


def build_metadata(
    model: FamilyModel,
    qm: QuantizedModel,
    plans: list[TensorPlan],
    *,
    name: str,
    metadata: Mapping[str, str | int | float] | None = None,
) -> dict[str, Any]:
    """Every key/value the file carries except general.architecture (which GGUFWriter adds)."""
    arch = model.family
    kv: dict[str, Any] = {
        **general_metadata(model, name),
        "general.file_type": _file_type(plans),
        "general.quantization_version": 2,
    }
    for key, value in model.describe().items():
        if key != "family":
            kv[f"{arch}.{key}"] = value
    kv[f"{arch}.sample_rate"] = int(model.sample_rate)
    # What the family needs to rebuild the model and drive synthesis (config, phoneme map, license).
    for key, value in model.embedded_metadata().items():
        if not key.startswith("general."):  # those are in general_metadata
            kv[f"{arch}.{key}"] = value
    kv["voxport.version"] = __version__
    kv["voxport.precision"] = qm.precision
    kv["voxport.method"] = qm.method
    kv["voxport.naming_version"] = NAMING_VERSION
    kv["voxport.shapes"] = json.dumps({p.gguf_name: list(p.shape) for p in plans}, separators=(",", ":"))
    for key, value in (metadata or {}).items():
        full = key if "." in key else f"voxport.{key}"
        if full in RESERVED_KEYS:
            raise BadInput(f"gguf metadata: '{key}' is written by voxport itself and cannot be overridden")
        kv[full] = value
    return kv


def write_gguf(
    model: FamilyModel,
    qm: QuantizedModel,
    path: Path,
    *,
    name: str,
    types: Mapping[str, str] | None = None,
    metadata: Mapping[str, str | int | float] | None = None,
    fallback_type: str = "F16",
) -> GgufWritten:
    """Write `qm`'s weights for `model` as one GGUF file at `path`, atomically and streamed.

    `types` maps globs (matched against the voxport and the GGUF name; the last matching pattern wins)
    to GGML type names for the Linear/Conv kernels (`model.quantizable()`), e.g. {"*": "Q4_K",
    "dec.*": "Q6_K"}. Rows that do not fit a type's block are stored as `fallback_type`.

    Returns a `GgufWritten`."""
    path = Path(path)
    state = model.state_dict()
    plans, fallbacks = plan_tensors(model, qm, types, state=state, fallback_type=fallback_type)
    kv = build_metadata(model, qm, plans, name=name, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        writer = GGUFWriter(tmp, model.family)
        try:
            for key, value in kv.items():
                _add_value(writer, key, value)
            # pass 1: tensor infos from the plan alone
            for p in plans:
                writer.add_tensor_info(
                    p.gguf_name, p.stored_shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.ggml_type
                )
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            # pass 2: one tensor encoded, written and dropped at a time
            for p in plans:
                data = encode_tensor(p, qm.weights[p.name], state[p.name])
                if data.nbytes != p.nbytes:  # a planning bug, never a user error
                    raise RuntimeError(f"gguf: {p.name} encoded to {data.nbytes} bytes, planned {p.nbytes}")
                writer.write_tensor_data(data)
                del data
        finally:
            writer.close()
    total_bytes = sum(p.nbytes for p in plans)
    total_elements = sum(p.n_elements for p in plans)
    return GgufWritten(
        path=path,
        bytes=path.stat().st_size,
        tensors=len(plans),
        tensor_types=Counter(p.ggml_type.name for p in plans),
        bits_per_weight=8 * total_bytes / max(total_elements, 1),
        file_type=LlamaFileType(kv["general.file_type"]).name,
        fallbacks=fallbacks,
    )
