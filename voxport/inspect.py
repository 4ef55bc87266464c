"""`voxport inspect`: what a checkpoint, an artifact or a build directory holds, in numbers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from voxport.errors import BadInput

_ONNX_BITS = {
    "FLOAT": 32,
    "FLOAT16": 16,
    "BFLOAT16": 16,
    "INT8": 8,
    "UINT8": 8,
    "INT4": 4,
    "UINT4": 4,
    "INT64": 64,
    "INT32": 32,
    "DOUBLE": 64,
    "BOOL": 8,
}


def inspect_path(path: Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    if not path.exists():
        raise BadInput(f"{path}: no such file or directory")
    if path.is_dir() and (path / "manifest.json").is_file():
        return _inspect_build(path)
    if path.suffix == ".onnx":
        return _inspect_onnx(path)
    if path.suffix == ".mlpackage":
        return _inspect_mlpackage(path)
    if path.suffix == ".gguf":
        from voxport.export.gguf.reader import describe_gguf

        return {"kind": "gguf", "path": str(path), **describe_gguf(path)}
    return _inspect_checkpoint(path, trust_pickle=trust_pickle)


def _inspect_checkpoint(path: Path, *, trust_pickle: bool) -> dict[str, Any]:
    from voxport.families.base import load_model

    model = load_model(path, trust_pickle=trust_pickle)
    state = model.state_dict()
    by_dtype: Counter[str] = Counter()
    nbytes = 0
    for tensor in state.values():
        by_dtype[str(tensor.dtype).replace("torch.", "")] += tensor.numel()
        nbytes += tensor.numel() * tensor.element_size()
    params = model.parameters()
    return {
        "kind": "checkpoint",
        "path": str(path),
        **model.describe(),
        "parameters": params,
        "tensors": len(state),
        "quantizable_tensors": len(model.quantizable()),
        "parameters_by_precision": dict(by_dtype),
        "bytes": nbytes,
        "bits_per_weight": round(8 * nbytes / max(params, 1), 3),
        "prunable_stacks": {s.name: s.num_layers for s in model.prunable_stacks()},
    }


def _inspect_onnx(path: Path) -> dict[str, Any]:
    import onnx
    from onnx import TensorProto

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BadInput(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    scale_like = ("__scale", "__shape")
    elements: Counter[str] = Counter()
    bits = 0
    weights = 0
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        dtype = TensorProto.DataType.Name(init.data_type)
        bits += count * _ONNX_BITS.get(dtype, 32)
        if init.name.endswith(scale_like):
            continue
        elements[dtype] += count
        weights += count
    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "kind": "onnx",
        "path": str(path),
        "bytes": path.stat().st_size,
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "metadata": {p.key: p.value for p in model.metadata_props},
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "parameters": weights,
        "parameters_by_precision": dict(elements),
        "bits_per_weight": round(bits / max(weights, 1), 3),
        "dequantize_nodes": ops.get("DequantizeLinear", 0),
        "nodes": sum(ops.values()),
    }


def _inspect_mlpackage(path: Path) -> dict[str, Any]:
    """Read through voxport's own MIL loader (coremltools' `load_spec` rewrites Manifest.json)."""
    import numpy as np

    from voxport.export.coreml.metadata import read_metadata
    from voxport.io import path_size
    from voxport.validate.mil import load_mlpackage

    package = load_mlpackage(path)
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
        "kind": "coreml",
        "path": str(path),
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


def _inspect_build(path: Path) -> dict[str, Any]:
    from voxport.manifest import read_manifest

    manifest = read_manifest(path)
    return {"kind": "build", "path": str(path), **manifest.model_dump(mode="json")}
