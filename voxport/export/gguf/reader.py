"""Read voxport GGUF files back: strict checks, dequantized fp32 weights, and a runner over them.

Everything that can be wrong with a file (not GGUF, truncated, corrupt tables, names or shapes that do
not fit the layout or the model) is raised as `BadInput` with one line naming the file.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf import quants as gguf_quants

from voxport.errors import BadInput
from voxport.export.gguf.names import NAMING_VERSION, READABLE_VERSIONS, from_gguf
from voxport.export.gguf.writer import storage_shape
from voxport.families.base import FamilyModel

REQUIRED_KEYS = ("general.architecture", "general.name", "voxport.naming_version", "voxport.shapes")
_SHORT = 80


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


class _Opened:
    """A parsed and checked GGUF file: metadata, tensor records keyed by voxport name, shapes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise BadInput(f"{path}: GGUF file not found")
        try:
            self.reader = GGUFReader(path)
        except Exception as exc:  # gguf-py raises ValueError/IndexError/KeyError/... on corrupt input
            raise BadInput(
                f"{path}: not a readable GGUF file ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        self.meta = self._metadata()
        missing = [k for k in REQUIRED_KEYS if k not in self.meta]
        if missing:
            raise BadInput(f"{path}: not a voxport GGUF file (missing metadata: {', '.join(missing)})")
        if self.meta["voxport.naming_version"] not in READABLE_VERSIONS:
            raise BadInput(
                f"{path}: tensor naming version {self.meta['voxport.naming_version']!r} is not supported "
                f"(this voxport reads versions up to {NAMING_VERSION})"
            )
        self.architecture = str(self.meta["general.architecture"])
        try:
            shapes = json.loads(self.meta["voxport.shapes"])
            self.shapes = {str(k): tuple(int(d) for d in v) for k, v in shapes.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise BadInput(
                f"{path}: metadata voxport.shapes is not a JSON object of shapes ({exc})"
            ) from None
        self.tensors: dict[str, Any] = {}  # voxport name -> ReaderTensor
        size = path.stat().st_size
        for t in self.reader.tensors:
            try:
                name = from_gguf(t.name)
            except ValueError as exc:
                raise BadInput(f"{path}: {exc}") from None
            if t.name not in self.shapes:
                raise BadInput(f"{path}: tensor {t.name} has no entry in metadata voxport.shapes")
            want = storage_shape(self.shapes[t.name])
            got = tuple(int(d) for d in reversed(t.shape.tolist()))
            if got != want:
                raise BadInput(
                    f"{path}: tensor {t.name} is stored as {list(got)}, but its recorded shape "
                    f"{list(self.shapes[t.name])} needs {list(want)}"
                )
            block, type_size = GGML_QUANT_SIZES[t.tensor_type]
            if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes or got[-1] % block:
                raise BadInput(f"{path}: tensor {t.name} data lies outside the file or has a bad size")
            self.tensors[name] = t
        unlisted = sorted(set(self.shapes) - {t.name for t in self.reader.tensors})
        if unlisted:
            raise BadInput(
                f"{path}: metadata voxport.shapes lists tensors the file lacks: {_listing(unlisted)}"
            )

    def _metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for key, field in self.reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                value = field.contents()
                if (
                    field.types
                    and field.types[0] == GGUFValueType.ARRAY
                    and field.types[-1] == GGUFValueType.UINT8
                ):
                    value = bytes(value)
            except Exception as exc:
                raise BadInput(f"{self.path}: metadata key {key!r} is corrupt ({_first_line(exc)})") from None
            meta[key] = value
        return meta

    def check_model(self, model: FamilyModel) -> None:
        if self.architecture != model.family:
            raise BadInput(
                f"{self.path}: architecture '{self.architecture}' does not match the model ({model.family})"
            )
        state = model.state_dict()
        missing = sorted(set(state) - set(self.tensors))
        unexpected = sorted(set(self.tensors) - set(state))
        if missing or unexpected:
            raise BadInput(
                f"{self.path}: tensors do not match the model "
                f"(missing: {_listing(missing) or 'none'}; unexpected: {_listing(unexpected) or 'none'})"
            )
        wrong = [
            f"{name} {list(self.shapes[t.name])} vs model {list(state[name].shape)}"
            for name, t in self.tensors.items()
            if tuple(self.shapes[t.name]) != tuple(state[name].shape)
        ]
        if wrong:
            raise BadInput(f"{self.path}: tensor shapes do not match the model: {_listing(wrong, 4)}")

    def dequantize(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        shape = self.shapes[t.name]
        if t.tensor_type in (
            GGMLQuantizationType.I8,
            GGMLQuantizationType.I16,
            GGMLQuantizationType.I32,
            GGMLQuantizationType.I64,
        ):
            return np.array(t.data, copy=True).reshape(shape)
        try:
            values = gguf_quants.dequantize(np.asarray(t.data), t.tensor_type)
        except Exception as exc:
            raise BadInput(f"{self.path}: tensor {t.name} cannot be decoded ({_first_line(exc)})") from None
        values = np.array(values, dtype=np.float32, copy=True).reshape(shape)
        if not np.isfinite(values).all():
            raise BadInput(f"{self.path}: tensor {t.name} holds NaN or infinite values (corrupt data?)")
        return values


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_gguf(path: Path, model: FamilyModel | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, {voxport name: float32 array in the original shape}) from a voxport GGUF file.

    With `model`, the file must hold exactly the model's tensors with the model's shapes and the
    model's architecture (BadInput listing the differences otherwise)."""
    opened = _Opened(Path(path))
    if model is not None:
        opened.check_model(model)
    tensors = {name: opened.dequantize(name) for name in opened.tensors}
    return opened.meta, tensors


def _short(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        return value if len(value) <= 8 else f"<array of {len(value)}>"
    if isinstance(value, str) and len(value) > _SHORT:
        return f"<{len(value)} chars>"
    return value


def describe_gguf(path: Path) -> dict[str, Any]:
    """What `voxport inspect model.gguf` shows: architecture, short metadata, tensor types, sizes.

    Files in a runtime's own layout (no voxport naming keys, e.g. llama.cpp's pockettts text model
    and mmproj) are described from their header alone."""
    from voxport.export.gguf.split import read_header

    meta, infos, _ = read_header(Path(path))
    if "voxport.naming_version" not in meta:
        types_: Counter[str] = Counter(t.ggml_type.name for t in infos)
        elements = sum(int(np.prod(t.shape, dtype=np.int64)) for t in infos)
        tensor_bytes = sum(t.nbytes for t in infos)
        return {
            "path": str(path),
            "architecture": meta.get("general.architecture"),
            "name": meta.get("general.name"),
            "metadata": {k: _short(v) for k, v in meta.items()},
            "tensors": len(infos),
            "tensor_types": dict(types_),
            "parameters": elements,
            "bytes": Path(path).stat().st_size,
            "tensor_bytes": tensor_bytes,
            "bits_per_weight": 8 * tensor_bytes / max(elements, 1),
        }
    opened = _Opened(Path(path))
    types: Counter[str] = Counter()
    tensor_bytes = 0
    elements = 0
    for t in opened.tensors.values():
        types[t.tensor_type.name] += 1
        tensor_bytes += int(t.n_bytes)
        elements += int(t.n_elements)
    return {
        "path": str(path),
        "architecture": opened.architecture,
        "name": opened.meta.get("general.name"),
        "metadata": {k: _short(v) for k, v in opened.meta.items() if k != "voxport.shapes"},
        "tensors": len(opened.tensors),
        "tensor_types": dict(types),
        "parameters": elements,
        "bytes": Path(path).stat().st_size,
        "tensor_bytes": tensor_bytes,
        "bits_per_weight": 8 * tensor_bytes / max(elements, 1),
    }


class GgufRunner:
    """A Runner over a GGUF file: its dequantized weights loaded into the family's own torch graphs.

    The synthesis loop (and so validate) is the same as for every other runner; only the weights
    come from the file."""

    name = "gguf"

    def __init__(self, model: FamilyModel, path: Path) -> None:
        self.path = Path(path)
        self.metadata, tensors = read_gguf(self.path, model)
        import torch

        self.model = model.with_weights({k: torch.from_numpy(v) for k, v in tensors.items()})
        self._runner = self.model.torch_runner()

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run(graph, inputs)
