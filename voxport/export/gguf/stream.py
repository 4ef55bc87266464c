"""Write a GGUF layout's files straight from a checkpoint on disk, one tensor (or row chunk) at a time.

`split.write_layout` writes a layout from a loaded model (`FamilyModel` + `QuantizedModel`), so the
whole model is in memory first. A multi-billion-parameter checkpoint does not fit that way on a small
machine, so this writer takes a *lazy* source instead (`LazyWeights`: names, shapes, and a function
reading one weight's float32 values, optionally a row range) and keeps at most one row chunk of one
tensor in memory, whatever the model's size:

1. every tensor is planned from shapes alone, with the same `plan_tensor` as the other writers (so a
   weight gets the same GGML type and fallback whichever writer carries it);
2. header, metadata and tensor infos are written (gguf-py `GGUFWriter`, as writer.py does);
3. each tensor's bytes are produced and written in chunks of whole rows: every GGML type quantizes
   rows independently (blocks run along the last axis), so chunked encoding gives the same bytes as
   encoding the tensor at once. Tensors a layout builds from several weights, or slices by rows, are
   loaded whole.

Each file is written atomically (temp file, then rename), like every stage output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from gguf import GGUFWriter, LlamaFileType

from voxport.errors import BadInput
from voxport.export.gguf.general import general_metadata
from voxport.export.gguf.split import LayoutWritten, _add_meta, _meta_of, layout_paths
from voxport.export.gguf.writer import (
    GGUF_PY_TYPES,
    TensorPlan,
    _check_types,
    _file_type,
    encode_tensor,
    plan_tensor,
)
from voxport.families.base import StreamSource
from voxport.families.layouts.gguf import GgufLayout, LayoutTensor
from voxport.io import atomic_path

#: float32 elements per row chunk: 16 M = 64 MB, plus its encoded bytes and the quantizer's temporaries
CHUNK_ELEMENTS = 1 << 24


class RowLoader(Protocol):
    def __call__(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class LazyWeights:
    """A model's weights, read on demand.

    `shapes`: every weight's shape (torch order); `load(name, rows=None)`: that weight's float32 values
    (rows = (r0, r1): only that range of dim 0); `quantizable`: the weights a quantized type may hold
    (what `FamilyModel.quantizable()` says for a loaded model)."""

    shapes: Mapping[str, tuple[int, ...]]
    load: RowLoader
    quantizable: Collection[str] = field(default_factory=frozenset)
    #: float weights to store as F16 rather than F32 (a recipe's fp16 for what is not quantized)
    float16: Collection[str] = field(default_factory=frozenset)


@dataclass
class _Item:
    plan: TensorPlan
    spec: LayoutTensor


class _Chunks:
    """What `GGUFWriter.write_tensor_data` needs of an array (`nbytes`, `tofile`), produced chunk by
    chunk so the writer's own alignment and bookkeeping stay in charge."""

    def __init__(self, nbytes: int, chunks: Callable[[], Iterator[np.ndarray]]) -> None:
        self.nbytes = nbytes
        self._chunks = chunks

    def tofile(self, fout: IO[bytes]) -> None:
        written = 0
        for chunk in self._chunks():
            data = np.ascontiguousarray(chunk)
            del chunk
            written += data.nbytes
            data.tofile(fout)
            del data
        if written != self.nbytes:  # a planning bug, never a user error
            raise RuntimeError(f"gguf stream: encoded {written} bytes, planned {self.nbytes}")


def _plan(
    spec: LayoutTensor,
    weights: LazyWeights,
    types: Mapping[str, str],
    fallback_type: str,
    fallbacks: list[dict[str, str]],
) -> TensorPlan:
    if spec.build is not None:
        if spec.shape is None:
            raise RuntimeError(f"gguf layout: derived tensor {spec.gguf_name} needs its shape")
        label = "+".join(spec.derived_from) or spec.gguf_name
        return TensorPlan(
            label, spec.gguf_name, GGUF_PY_TYPES[spec.force or "F32"], spec.shape, spec.shape, "fp32"
        )
    assert spec.source is not None, spec.gguf_name
    if spec.source not in weights.shapes:
        raise BadInput(f"gguf: the layout needs weight {spec.source!r}, which the checkpoint does not have")
    shape = tuple(int(d) for d in weights.shapes[spec.source])
    if spec.rows is not None:
        shape = (spec.rows[1] - spec.rows[0], *shape[1:])
    stored = spec.shape or shape
    if int(np.prod(stored)) != int(np.prod(shape)):
        raise RuntimeError(
            f"gguf layout: {spec.gguf_name} shape {stored} does not hold {spec.source} {shape}"
        )
    if spec.force is not None or len(stored) < 2:
        forced = spec.force or "F32"
        return TensorPlan(spec.source, spec.gguf_name, GGUF_PY_TYPES[forced], shape, stored, "fp32")
    # a placeholder of the stored float type: the plan depends on the name, shape and type rules, never
    # on the values
    placeholder = np.empty(0, dtype=np.float16 if spec.source in weights.float16 else np.float32)
    return plan_tensor(
        spec.source,
        spec.gguf_name,
        placeholder,
        shape,
        stored,
        types=types,
        quantizable=spec.source in weights.quantizable,
        fallback_type=fallback_type,
        fallbacks=fallbacks,
    )


def _chunks(item: _Item, weights: LazyWeights, chunk_elements: int) -> Iterator[np.ndarray]:
    """The tensor's encoded bytes, in chunks of whole rows where the layout copies one weight as is."""
    plan, spec = item.plan, item.spec
    if spec.build is not None:
        values = np.ascontiguousarray(spec.build(lambda n: weights.load(n)), dtype=np.float32)
        yield encode_tensor(plan, values, values)
        return
    assert spec.source is not None
    if spec.rows is not None:
        values = weights.load(spec.source, spec.rows)
        yield encode_tensor(plan, values, values)
        return
    shape = tuple(weights.shapes[spec.source])
    # rows of the *stored* 2-D (or 1-D) view must map onto rows of dim 0 of the source
    stored = plan.stored_shape
    chunkable = len(shape) >= 1 and len(stored) >= 2 and stored[0] == shape[0]
    if not chunkable:
        values = weights.load(spec.source)
        yield encode_tensor(plan, values, values)
        return
    row = max(1, int(np.prod(stored[1:], dtype=np.int64)))
    step = max(1, chunk_elements // row)
    for r0 in range(0, stored[0], step):
        r1 = min(stored[0], r0 + step)
        values = weights.load(spec.source, (r0, r1))
        part = TensorPlan(
            plan.name,
            plan.gguf_name,
            plan.ggml_type,
            (r1 - r0, *shape[1:]),
            (r1 - r0, *stored[1:]),
            plan.source,
        )
        yield encode_tensor(part, values, values)
        del values


def write_layout_stream(
    layout: GgufLayout,
    weights: LazyWeights,
    out_dir: Path,
    *,
    stem: str,
    general: Mapping[str, Any],
    types: Mapping[str, str] | None = None,
    fallback_type: str = "F16",
    precision: str = "fp32",
    method: str = "none",
    metadata: Mapping[str, str | int | float] | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
    on_tensor: Callable[[str, TensorPlan], None] | None = None,
) -> LayoutWritten:
    """Write every file of `layout` under `out_dir` as `<stem>[.<suffix>].gguf` from `weights`.

    `general` holds the `general.*` keys (name, license, ...; a layout file's own value wins);
    `types` maps globs over voxport/GGUF names to GGML types for the quantizable weights, the last
    match winning (e.g. {"*": "Q4_K"}); rows a type's block does not fit fall back as in writer.py.
    `on_tensor(gguf_name, plan)` is called after each tensor is written (progress, instrumentation)."""
    if fallback_type not in ("F16", "F32"):
        raise BadInput(f"gguf: fallback type must be F16 or F32, got {fallback_type!r}")
    if chunk_elements < 1:
        raise ValueError("chunk_elements must be positive")
    checked = _check_types(types or {})
    files = layout.files(lambda n: weights.load(n))
    paths = layout_paths(Path(out_dir), stem, files)
    fallbacks: list[dict[str, str]] = []
    planned = {
        f.role: [_Item(_plan(t, weights, checked, fallback_type, fallbacks), t) for t in f.tensors]
        for f in files
    }
    tensor_types: Counter[str] = Counter()
    total_bytes = total_elements = 0
    file_types: dict[str, str] = {}
    for spec in files:
        path = paths[spec.role]
        items = planned[spec.role]
        plans = [i.plan for i in items]
        file_type = _file_type(plans)
        file_types[spec.role] = LlamaFileType(file_type).name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            writer = GGUFWriter(tmp, spec.architecture)
            try:
                for key, value in general.items():
                    if key not in spec.metadata and key != "general.architecture":
                        _add_meta(writer, key, _meta_of(value))
                writer.add_uint32("general.file_type", file_type)
                writer.add_uint32("general.quantization_version", 2)
                for key, meta in spec.metadata.items():
                    _add_meta(writer, key, meta)
                writer.add_string("voxport.precision", precision)
                writer.add_string("voxport.method", method)
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
                for item in items:

                    def chunks(item: _Item = item) -> Iterator[np.ndarray]:
                        return _chunks(item, weights, chunk_elements)

                    writer.write_tensor_data(_Chunks(item.plan.nbytes, chunks))  # type: ignore[arg-type]
                    if on_tensor is not None:
                        on_tensor(item.plan.gguf_name, item.plan)
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


def source_weights(source: StreamSource) -> LazyWeights:
    """A family's `StreamSource` (weightless model + one-weight reader) as `LazyWeights`, with the
    model's own `quantizable()` set, so the streamed file plans every tensor as the in-memory exporter
    (split.write_layout) does for the loaded model."""

    def load(name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        value = source.read(name, None if rows is None else slice(rows[0], rows[1]))
        return np.ascontiguousarray(value.detach().numpy(), dtype=np.float32)

    return LazyWeights(source.shapes, load, frozenset(source.model.quantizable()))


def write_source_stream(
    source: StreamSource,
    out_dir: Path,
    *,
    stem: str,
    name: str,
    types: Mapping[str, str] | None = None,
    fallback_type: str = "F16",
    precision: str = "fp32",
    method: str = "none",
    metadata: Mapping[str, str | int | float] | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
    on_tensor: Callable[[str, TensorPlan], None] | None = None,
) -> LayoutWritten:
    """`write_layout_stream` for a family's `StreamSource`: its model's GGUF layout and general.* keys.

    Only families that describe a GGUF layout (`FamilyModel.gguf_layout()`) stream; voxport's one-file
    layout needs the loaded model (writer.py)."""
    layout = source.model.gguf_layout()
    if layout is None:
        raise BadInput(
            f"gguf: streaming conversion needs a family GGUF layout; {source.model.family} has none "
            "(convert it with the model loaded instead)"
        )
    return write_layout_stream(
        layout,
        source_weights(source),
        out_dir,
        stem=stem,
        general=general_metadata(source.model, name),
        types=types,
        fallback_type=fallback_type,
        precision=precision,
        method=method,
        metadata=metadata,
        chunk_elements=chunk_elements,
        on_tensor=on_tensor,
    )
