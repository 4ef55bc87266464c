"""A Core ML package on disk, without macOS: is it whole (`voxport verify`), and what does it hold
(`voxport inspect`)? Both read the package's files directly, never compiling it."""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from voxport.errors import BadInput


def check_package(path: Path) -> None:
    """Parse the package and check the weight blobs its program references.

    skip_model_load parses without compiling (which only macOS can do), so it also skips reading the
    weights: a package missing `weights/weight.bin` parsed fine. Every blob a const op points at must
    be in a present, readable weight file, start with the blob sentinel and end inside the file."""
    import coremltools as ct

    model = ct.models.MLModel(str(path), skip_model_load=True)
    model_dir = _coreml_model_dir(path)
    refs: dict[str, list[int]] = {}
    for name, offset in _blob_refs(model.get_spec()):
        refs.setdefault(name, []).append(offset)
    for name, offsets in sorted(refs.items()):
        weights = model_dir / name.removeprefix("@model_path/")
        try:
            with open(weights, "rb") as fh:  # one handle, one 24-byte read per blob: never the whole file
                size = os.fstat(fh.fileno()).st_size
                records = {offset: os.pread(fh.fileno(), _BLOB_METADATA.size, offset) for offset in offsets}
        except OSError as exc:
            rel = weights.relative_to(path).as_posix() if path in weights.parents else name
            raise OSError(f"weight file {rel} is not readable: {exc.strerror or exc}") from None
        for offset, record in sorted(records.items()):
            _check_blob(record, size, offset, name)


def _coreml_model_dir(package: Path) -> Path:
    """Where `@model_path` points: the folder of the package's root model item (Manifest.json)."""
    manifest = json.loads((package / "Manifest.json").read_text(encoding="utf-8"))
    item = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
    return (package / "Data" / str(item["path"])).parent


def _blob_refs(message: Any) -> set[tuple[str, int]]:
    """(file name, offset) of every BlobFileValue in a Core ML spec, whatever op or block holds it."""
    found: set[tuple[str, int]] = set()
    stack = [message]
    while stack:
        msg = stack.pop()
        if msg.DESCRIPTOR.name == "BlobFileValue":
            found.add((msg.fileName, msg.offset))
            continue
        for fd, value in msg.ListFields():
            if fd.type != fd.TYPE_MESSAGE:
                continue
            if fd.message_type.GetOptions().map_entry:
                value_field = fd.message_type.fields_by_name["value"]
                if value_field.type == value_field.TYPE_MESSAGE:
                    stack.extend(value.values())
            elif getattr(fd, "is_repeated", None) or getattr(fd, "label", None) == 3:  # LABEL_REPEATED
                stack.extend(value)
            else:
                stack.append(value)
    return found


#: a Core ML weight blob's metadata: sentinel, data type, data size, data offset (MIL blob storage v2)
_BLOB_METADATA = struct.Struct("<IIQQ")
_BLOB_SENTINEL = 0xDEADBEEF


def _check_blob(record: bytes, file_size: int, offset: int, name: str) -> None:
    """One blob's metadata record (read at `offset`): the sentinel, and data that ends inside the file."""
    if len(record) < _BLOB_METADATA.size:
        raise ValueError(f"{name} is {file_size} bytes: the weight at offset {offset} is damaged or cut off")
    sentinel, _dtype, size, start = _BLOB_METADATA.unpack(record)
    if sentinel != _BLOB_SENTINEL or start + size > file_size:
        raise ValueError(f"{name}: the weight at offset {offset} is damaged or cut off")


def describe_mlpackage(path: Path) -> dict[str, Any]:
    """Read through voxport's own MIL loader (coremltools' `load_spec` rewrites Manifest.json)."""
    import numpy as np

    from voxport.export.coreml.metadata import read_metadata
    from voxport.io import path_size
    from voxport.runtime.mil import load_mlpackage

    _check_weights_present(path)
    try:
        package = load_mlpackage(path)
    except (ValueError, IndexError, RuntimeError) as exc:  # coremltools' blob reader on a damaged file
        raise BadInput(
            f"{path}: damaged Core ML package: its weights do not read back ({type(exc).__name__}: {exc}); "
            "re-export it or copy the whole .mlpackage directory again"
        ) from None
    ops: Counter[str] = Counter()
    weights = 0
    for function in package.program.functions.values():
        for op in function.operations:
            ops[op.op_type] += 1
            out = op.outputs[0]
            feeds_constexpr = any(c.op_type.startswith("constexpr_") for c in out.child_ops)
            is_weight = op.op_type.startswith("constexpr_") or (op.op_type == "const" and not feeds_constexpr)
            if is_weight and len(out.shape) >= 2:  # weights, not scalars, scales or the codes behind them
                weights += int(np.prod([int(d) for d in out.shape]))
    weight_file = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    weight_bytes = weight_file.stat().st_size if weight_file.is_file() else 0
    return {
        "bytes": path_size(path),
        "specification_version": package.specification_version,
        "inputs": _coreml_input_ranges(package.spec),
        "outputs": package.output_names,
        **read_metadata(package.spec),
        "weight_elements": weights,
        "bits_per_weight": round(8 * weight_bytes / max(weights, 1), 3),
        "compressed_weight_ops": {k: v for k, v in ops.items() if k.startswith("constexpr_")},
        "ops": sum(ops.values()),
    }


def _coreml_input_ranges(spec: Any) -> dict[str, list[str]]:
    """Each input's dimensions as Core ML accepts them: `n` fixed, `lo..hi` for a RangeDim."""
    out = {}
    for feature in spec.description.input:
        array = feature.type.multiArrayType
        ranges = array.shapeRange.sizeRanges
        if ranges:
            dims = [
                str(r.lowerBound) if r.lowerBound == r.upperBound else f"{r.lowerBound}..{r.upperBound}"
                for r in ranges
            ]
        else:
            dims = [str(d) for d in array.shape]
        out[feature.name] = dims
    return out


_MLPACKAGE_WEIGHTS = Path("Data") / "com.apple.CoreML" / "weights"


def _check_weights_present(package: Path) -> None:
    """Every weight file the model spec points at (`@model_path/weights/weight.bin`) must exist:
    coremltools' MIL reader fails with a bare traceback when one is missing (a partial copy)."""
    spec_dir = package / "Data" / "com.apple.CoreML"
    specs = sorted(spec_dir.glob("*.mlmodel")) if spec_dir.is_dir() else []
    if not package.is_dir() or not specs:
        raise BadInput(
            f"{package}: not a Core ML package (no Data/com.apple.CoreML/*.mlmodel inside); "
            "re-export it or copy the whole .mlpackage directory"
        )
    referenced = set(re.findall(rb"@model_path/weights/([A-Za-z0-9_.-]+)", specs[0].read_bytes()))
    missing = sorted(
        n.decode() for n in referenced if not (package / _MLPACKAGE_WEIGHTS / n.decode()).is_file()
    )
    if missing:
        raise BadInput(
            f"{package}: incomplete Core ML package: {_MLPACKAGE_WEIGHTS / missing[0]} is missing; "
            "re-export it or copy the whole .mlpackage directory"
        )
