"""GGUF in a runtime's own multi-file layout (e.g. llama.cpp's text model + `mmproj` pair).

The one-file writer (writer.py) uses voxport's own names, one tensor per weight. Some runtimes expect
something else: other names, several files, weights split (a fused q|k|v) or folded together (learned
vectors appended to an embedding table), convolution kernels kept 3-D and forced to a type. A family
describes such a layout as data (`GgufLayout`, in families/layouts/gguf.py); this module writes it
with the same planning and encoding as writer.py (so a weight gets the same GGML type in either
layout, int4 stays bit-exact Q4_0) and reads it back through the layout's exact inverse, for parity in
the family's torch graphs.

Writing is streamed and atomic per file, like writer.py: header, metadata and tensor infos from a
plan made from shapes alone, then one tensor encoded, written and dropped at a time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType
from gguf import quants as gguf_quants

from voxport.errors import BadInput
from voxport.export.gguf.general import general_metadata
from voxport.export.gguf.writer import (
    GGUF_PY_TYPES,
    TensorPlan,
    _check_types,
    _file_type,
    encode_tensor,
    plan_tensor,
)
from voxport.families.base import FamilyModel
from voxport.families.layouts.gguf import GgufLayout, LayoutFile, LayoutTensor, MetaValue, Weights
from voxport.io import atomic_path
from voxport.quantize.stage import QuantizedModel
from voxport.quantize.tensor import QuantizedTensor

T = GGMLQuantizationType


def _rows(value: Any, rows: tuple[int, int] | None) -> Any:
    """A row range of a stored weight; QuantizedTensor rows are independent, so slicing is exact."""
    if rows is None:
        return value
    r0, r1 = rows
    if isinstance(value, QuantizedTensor):
        return QuantizedTensor(
            codes=value.codes[r0:r1],
            scales=value.scales[r0:r1],
            offsets=None if value.offsets is None else value.offsets[r0:r1],
            bits=value.bits,
            block_size=value.block_size,
            shape=(r1 - r0, *value.shape[1:]),
            method=value.method,
        )
    return np.asarray(value)[r0:r1]


def _stored_float(value: Any) -> np.ndarray:
    if isinstance(value, QuantizedTensor):
        return value.dequantize()
    return np.asarray(value, dtype=np.float32)


@dataclass
class _Planned:
    """A planned tensor and how to get its bytes' source at write time (never before: the write
    streams, so at most one tensor's float copy exists at a time)."""

    plan: TensorPlan
    value: Any  # what encode_tensor reads for "stored"/"codes"/"dequantized"
    fp32: Callable[[], Any]  # what encode_tensor reads for "fp32", made on demand


def _plan_file(
    model: FamilyModel,
    qm: QuantizedModel,
    spec: LayoutFile,
    types: Mapping[str, str],
    fallback_type: str,
    fallbacks: list[dict[str, str]],
) -> list[_Planned]:
    state = model.state_dict()
    quantizable = model.quantizable()
    out: list[_Planned] = []
    for t in spec.tensors:
        if t.build is not None:
            if t.shape is None:
                raise RuntimeError(f"gguf layout: derived tensor {t.gguf_name} needs its shape")
            build = t.build

            def built(build: Callable[[Weights], np.ndarray] = build) -> np.ndarray:
                return np.ascontiguousarray(
                    build(lambda key: _stored_float(qm.weights[key])), dtype=np.float32
                )

            halves = t.derived_from and all(
                not isinstance(qm.weights[n], QuantizedTensor)
                and np.asarray(qm.weights[n]).dtype == np.float16
                for n in t.derived_from
            )
            forced = t.force or ("F16" if halves else "F32")
            ggml_type = GGUF_PY_TYPES[forced]
            label = "+".join(t.derived_from) or t.gguf_name
            plan = TensorPlan(label, t.gguf_name, ggml_type, t.shape, t.shape, "fp32")
            out.append(_Planned(plan, None, built))
            continue
        assert t.source is not None, t.gguf_name
        value = _rows(qm.weights[t.source], t.rows)
        rows = t.rows

        def fp32(name: str = t.source, rows: tuple[int, int] | None = rows) -> Any:
            return state[name] if rows is None else state[name][rows[0] : rows[1]]

        shape = tuple(
            int(d) for d in (value.shape if isinstance(value, QuantizedTensor) else np.shape(value))
        )
        stored = t.shape or shape
        if int(np.prod(stored)) != int(np.prod(shape)):
            raise RuntimeError(f"gguf layout: {t.gguf_name} shape {stored} does not hold {t.source} {shape}")
        if t.force is not None or len(stored) < 2:
            # runtime-mandated type (convolutions), and every vector in F32 as llama.cpp's converters do
            forced = t.force or "F32"
            if isinstance(value, QuantizedTensor):
                fallbacks.append(
                    {
                        "name": t.source,
                        "gguf_name": t.gguf_name,
                        "requested": f"int{value.bits}",
                        "stored": forced,
                        "reason": "the runtime needs this tensor in " + forced,
                    }
                )
            plan = TensorPlan(t.source, t.gguf_name, GGUF_PY_TYPES[forced], shape, stored, "fp32")
            out.append(_Planned(plan, value, lambda value=value: _stored_float(value)))
            continue
        plan = plan_tensor(
            t.source,
            t.gguf_name,
            value,
            shape,
            stored,
            types=types,
            quantizable=t.source in quantizable,
            fallback_type=fallback_type,
            fallbacks=fallbacks,
        )
        out.append(_Planned(plan, value, fp32))
    return out


def _add_meta(writer: GGUFWriter, key: str, meta: MetaValue) -> None:
    value = meta.value
    if meta.type == GGUFValueType.ARRAY and isinstance(value, (bytes, bytearray)):
        value = list(bytes(value))
    elif meta.type == GGUFValueType.ARRAY:
        value = list(value)
    writer.add_key_value(key, value, meta.type, sub_type=meta.sub_type)


@dataclass(frozen=True)
class LayoutWritten:
    """What `write_layout` wrote: each file by role with its size and general.file_type name, the GGML
    types over all files (by name), bits per weight over all stored tensors, and the fallbacks."""

    paths: dict[str, Path]
    bytes: dict[str, int]
    tensor_types: Counter[str]
    bits_per_weight: float
    fallbacks: list[dict[str, str]]
    file_types: dict[str, str]


def layout_paths(out_dir: Path, stem: str, files: list[LayoutFile]) -> dict[str, Path]:
    return {f.role: out_dir / (f"{stem}.{f.suffix}.gguf" if f.suffix else f"{stem}.gguf") for f in files}


def write_layout(
    model: FamilyModel,
    qm: QuantizedModel,
    layout: GgufLayout,
    out_dir: Path,
    *,
    stem: str,
    name: str,
    types: Mapping[str, str] | None = None,
    metadata: Mapping[str, str | int | float] | None = None,
    fallback_type: str = "F16",
) -> LayoutWritten:
    """Write every file of `layout` for `qm` under `out_dir` as `<stem>[.<suffix>].gguf`."""
    if fallback_type not in ("F16", "F32"):
        raise BadInput(f"gguf: fallback type must be F16 or F32, got {fallback_type!r}")
    missing = sorted(set(model.state_dict()) - set(qm.weights))
    if missing:
        raise BadInput(f"gguf: the quantized weights do not match the model (missing: {', '.join(missing)})")
    checked = _check_types(types or {})
    files = layout.files(lambda n: _stored_float(qm.weights[n]))
    paths = layout_paths(Path(out_dir), stem, files)
    fallbacks: list[dict[str, str]] = []
    planned = {f.role: _plan_file(model, qm, f, checked, fallback_type, fallbacks) for f in files}
    tensor_types: Counter[str] = Counter()
    total_bytes = total_elements = 0
    file_types: dict[str, str] = {}
    general = general_metadata(model, name)
    for spec in files:
        path = paths[spec.role]
        plans = [p.plan for p in planned[spec.role]]
        file_type = _file_type(plans)
        file_types[spec.role] = LlamaFileType(file_type).name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            writer = GGUFWriter(tmp, spec.architecture)
            try:
                for key, value in general.items():
                    if key not in spec.metadata:  # the layout's own value wins (e.g. general.type)
                        _add_meta(writer, key, _meta_of(value))
                writer.add_uint32("general.file_type", file_type)
                writer.add_uint32("general.quantization_version", 2)
                for key, meta in spec.metadata.items():
                    _add_meta(writer, key, meta)
                writer.add_string("voxport.precision", qm.precision)
                writer.add_string("voxport.method", qm.method)
                for key, value in (metadata or {}).items():
                    full = key if "." in key else f"voxport.{key}"
                    if full in spec.metadata or full.startswith("general."):
                        raise BadInput(f"gguf metadata: '{key}' is written by voxport itself")
                    _add_meta(writer, full, _meta_of(value))
                for p in plans:
                    writer.add_tensor_info(
                        p.gguf_name, p.stored_shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.ggml_type
                    )
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                for item in planned[spec.role]:
                    data = encode_tensor(
                        item.plan, item.value, item.fp32() if item.plan.source == "fp32" else None
                    )
                    if data.nbytes != item.plan.nbytes:
                        plan = item.plan
                        raise RuntimeError(
                            f"gguf: {plan.gguf_name} encoded to {data.nbytes} bytes, planned {plan.nbytes}"
                        )
                    writer.write_tensor_data(data)
                    del data
            finally:
                writer.close()
        for p in plans:
            tensor_types[p.ggml_type.name] += 1
            total_bytes += p.nbytes
            total_elements += p.n_elements
    return LayoutWritten(
        paths=paths,
        bytes={role: p.stat().st_size for role, p in paths.items()},
        tensor_types=tensor_types,
        bits_per_weight=8 * total_bytes / max(total_elements, 1),
        fallbacks=fallbacks,
        file_types=file_types,
    )


def _meta_of(value: Any) -> MetaValue:
    if isinstance(value, bool):
        return MetaValue(value, GGUFValueType.BOOL)
    if isinstance(value, int):
        return MetaValue(value, GGUFValueType.UINT32 if 0 <= value < 2**32 else GGUFValueType.INT64)
    if isinstance(value, float):
        return MetaValue(value, GGUFValueType.FLOAT32)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):  # general.languages, .tags
        return MetaValue(value, GGUFValueType.ARRAY, GGUFValueType.STRING)
    return MetaValue(str(value), GGUFValueType.STRING)


# --- reading back ----------------------------------------------------------------------------------


_SCALARS: dict[int, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}


class _Cursor:
    """A little-endian GGUF v2/v3 parser over a memory map. gguf-py's GGUFReader builds numpy views per
    array element, which takes seconds for a tokenizer's 240 kB `precompiled_charsmap`; numeric
    arrays are read here with one `frombuffer` each."""

    def __init__(self, data: np.ndarray, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, dtype: np.dtype, count: int = 1) -> np.ndarray:
        end = self.pos + dtype.itemsize * count
        if end > len(self.data):
            raise BadInput(f"{self.path}: truncated GGUF file")
        out = np.frombuffer(self.data[self.pos : end], dtype=dtype, count=count)
        self.pos = end
        return out

    def u32(self) -> int:
        return int(self.take(np.dtype("<u4"))[0])

    def u64(self) -> int:
        return int(self.take(np.dtype("<u8"))[0])

    def string(self) -> bytes:
        n = self.u64()
        return self.take(np.dtype("u1"), n).tobytes()

    def value(self, vtype: int) -> Any:
        if vtype == GGUFValueType.STRING:
            raw = self.string()
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
        if vtype == GGUFValueType.ARRAY:
            sub, count = self.u32(), self.u64()
            if sub == GGUFValueType.UINT8:
                return self.take(np.dtype("u1"), count).tobytes()
            if sub in _SCALARS:
                values = self.take(_SCALARS[sub], count)
                return [bool(v) for v in values] if sub == GGUFValueType.BOOL else values.tolist()
            return [self.value(sub) for _ in range(count)]
        if vtype in _SCALARS:
            v = self.take(_SCALARS[vtype])[0]
            return bool(v) if vtype == GGUFValueType.BOOL else v.item()
        raise BadInput(f"{self.path}: unknown GGUF value type {vtype}")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order
    ggml_type: GGMLQuantizationType
    begin: int  # absolute byte offset of the data
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, Any], list[TensorInfo], np.ndarray]:
    """(metadata, tensor infos, the file as a read-only uint8 memory map), without reading tensor data.

    Strings come back as str (bytes when not UTF-8), UINT8 arrays as bytes, other arrays as lists."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: GGUF file not found")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(data, path)
    try:
        if data[:4].tobytes() != b"GGUF":
            raise BadInput(f"{path}: not a GGUF file (bad magic)")
        cur.pos = 4
        version = cur.u32()
        if version not in (2, 3):
            raise BadInput(f"{path}: GGUF version {version} is not supported")
        n_tensors, n_kv = cur.u64(), cur.u64()
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string().decode("utf-8")
            meta[key] = cur.value(cur.u32())
        raw_infos = []
        for _ in range(n_tensors):
            name = cur.string().decode("utf-8")
            n_dims = cur.u32()
            dims = [cur.u64() for _ in range(n_dims)]
            ggml_type = GGMLQuantizationType(cur.u32())
            raw_infos.append((name, tuple(reversed(dims)), ggml_type, cur.u64()))
    except (ValueError, OverflowError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: corrupt GGUF header ({exc})") from None
    alignment = int(meta.get("general.alignment", 32))
    start = -(-cur.pos // alignment) * alignment
    infos = []
    for name, shape, ggml_type, offset in raw_infos:
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        n = int(np.prod(shape, dtype=np.int64))
        if not shape or shape[-1] % block:
            raise BadInput(f"{path}: tensor {name} has a bad size for {ggml_type.name}")
        info = TensorInfo(name, shape, ggml_type, start + offset, n // block * type_size)
        if info.begin + info.nbytes > len(data):
            raise BadInput(f"{path}: tensor {name} data lies outside the file")
        infos.append(info)
    return meta, infos, data


def read_file(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """(metadata, {gguf name: float32 values in numpy storage order}, {gguf name: GGML type name})."""
    meta, infos, data = read_header(path)
    tensors: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for t in infos:
        block, type_size = GGML_QUANT_SIZES[t.ggml_type]
        row_bytes = t.shape[-1] // block * type_size
        raw = np.asarray(data[t.begin : t.begin + t.nbytes]).reshape(*t.shape[:-1], row_bytes)
        try:
            values = gguf_quants.dequantize(raw, t.ggml_type)
        except Exception as exc:
            raise BadInput(f"{path}: tensor {t.name} cannot be decoded ({exc})") from None
        values = np.array(values, dtype=np.float32, copy=True).reshape(t.shape)
        if not np.isfinite(values).all():
            raise BadInput(f"{path}: tensor {t.name} holds NaN or infinite values (corrupt data?)")
        tensors[t.name] = values
        types[t.name] = t.ggml_type.name
    return meta, tensors, types


def read_layout(
    model: FamilyModel, layout: GgufLayout, paths: Mapping[str, Path]
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """({role: metadata}, {voxport name: float32 values in the model's shapes}) from a layout's files.

    The inverse is exact for every plain tensor (rows concatenated back, reshaped); derived tensors use
    their layout's `inverse`. The result must cover the model's weights exactly, with its shapes."""
    state = model.state_dict()
    files = layout.files(lambda n: state[n].detach().float().numpy())
    roles = {f.role for f in files}
    if set(paths) != roles:
        raise BadInput(f"gguf: the layout has files {sorted(roles)}, got {sorted(paths)}")
    metas: dict[str, dict[str, Any]] = {}
    out: dict[str, np.ndarray] = {}
    pieces: dict[str, list[tuple[int, np.ndarray]]] = {}
    derived: list[tuple[LayoutTensor, np.ndarray, dict[str, Any]]] = []
    for spec in files:
        path = Path(paths[spec.role])
        meta, tensors, _ = read_file(path)
        metas[spec.role] = meta
        if meta.get("general.architecture") != spec.architecture:
            raise BadInput(
                f"{path}: architecture {meta.get('general.architecture')!r}, expected {spec.architecture!r}"
            )
        wanted = {t.gguf_name for t in spec.tensors}
        missing = sorted(wanted - set(tensors))
        extra = sorted(set(tensors) - wanted)
        if missing or extra:
            raise BadInput(
                f"{path}: tensors do not match the layout (missing: {', '.join(missing[:6]) or 'none'}; "
                f"unexpected: {', '.join(extra[:6]) or 'none'})"
            )
        for t in spec.tensors:
            values = tensors[t.gguf_name]
            if t.build is not None:
                derived.append((t, values, meta))
            elif t.rows is not None:
                pieces.setdefault(t.source or "", []).append((t.rows[0], values))
            else:
                assert t.source is not None
                out[t.source] = _shaped(path, t.gguf_name, values, tuple(state[t.source].shape))
    for name, parts in pieces.items():
        joined = np.concatenate([v for _, v in sorted(parts, key=lambda p: p[0])], axis=0)
        out[name] = _shaped(Path(paths[files[0].role]), name, joined, tuple(state[name].shape))
    for t, values, meta in derived:
        assert t.inverse is not None, t.gguf_name
        for name, v in t.inverse(values, meta, out).items():
            out[name] = _shaped(Path(t.gguf_name), name, v, tuple(state[name].shape))
    missing = sorted(set(state) - set(out))
    extra = sorted(set(out) - set(state))
    if missing or extra:
        raise BadInput(
            "gguf: the files do not give back the model's weights "
            f"(missing: {', '.join(missing[:6]) or 'none'}; unexpected: {', '.join(extra[:6]) or 'none'})"
        )
    return metas, out


def _shaped(path: Path, name: str, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if int(np.prod(values.shape)) != int(np.prod(shape)):
        raise BadInput(f"{path}: {name} holds {list(values.shape)}, the model needs {list(shape)}")
    return np.ascontiguousarray(values.reshape(shape), dtype=np.float32)


class LayoutRunner:
    """A Runner over a layout's files: their dequantized weights mapped back to voxport names and
    loaded into the family's own torch graphs (as `reader.GgufRunner` does for one-file GGUF)."""

    name = "gguf"

    def __init__(self, model: FamilyModel, layout: GgufLayout, paths: Mapping[str, Path]) -> None:
        import torch

        self.paths = {k: Path(v) for k, v in paths.items()}
        self.metadata, weights = read_layout(model, layout, self.paths)
        self.model = model.with_weights({k: torch.from_numpy(v) for k, v in weights.items()})
        self._runner = self.model.torch_runner()

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run(graph, inputs)
