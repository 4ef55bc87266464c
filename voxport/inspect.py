"""`voxport inspect`: what a checkpoint, an artifact or a build directory holds, in numbers."""

from __future__ import annotations

import re
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
    """What `path` holds; a BadInput saying what the thing is when it is not something voxport reads."""
    if not path.exists():
        raise BadInput(f"{path}: no such file or directory")
    if path.is_dir() and (path / "manifest.json").is_file():
        return _inspect_build(path)
    if _is_build_dir(path):
        raise BadInput(
            f"{path} is a build directory without manifest.json (the build did not finish): run "
            "`voxport build` again, or inspect one of its files"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise BadInput(f"{path}: {_empty_file(path)}")
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
    if not model.graph.node:
        # protobuf parses many byte strings (even a few bytes of text) as an empty model
        raise BadInput(f"{path}: not a valid ONNX model (no graph nodes); re-export or re-download it")
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


def _is_build_dir(path: Path) -> bool:
    """A voxport output directory: a manifest, or the stage folder every build writes first."""
    return path.is_dir() and ((path / "manifest.json").is_file() or (path / "stages").is_dir())


def _empty_file(path: Path) -> str:
    kind = {".onnx": "ONNX model", ".gguf": "GGUF file", ".safetensors": "safetensors file"}.get(path.suffix)
    what = f"not a valid {kind}" if kind else "not a model"
    return f"{what} (0 bytes): an interrupted copy or build? rebuild or copy it again"


def not_a_voice(path: Path) -> str | None:
    """Why `say` cannot speak with `path` when it is a thing voxport knows but does not run (a build
    directory, a GGUF file, a Core ML package, an empty file), with what to pass instead; None
    otherwise, and then the family detection has its say.

    `say` runs ONNX artifacts (in ONNX Runtime) and checkpoints (in torch). A GGUF file needs a
    llama.cpp-style runtime and a Core ML package needs Apple's: both are checked by `voxport
    validate`, but there is nothing here to speak with them."""
    runs = "say runs ONNX artifacts and checkpoints"
    if _is_build_dir(path):
        example = _onnx_artifacts(path)
        instead = f"e.g. {example[0]}" if example else "e.g. DIR/onnx/NAME.int8.onnx"
        return f"{path} is a build directory; pass one of its artifacts, {instead}"
    if path.suffix == ".gguf" and path.is_file():
        return f"{path}: {runs}; this is a GGUF file (for llama.cpp-style runtimes); {_use_onnx(path)}"
    if path.suffix == ".mlpackage":
        return f"{path}: {runs}; this is a Core ML package (runs on Apple devices); {_use_onnx(path)}"
    if path.is_file() and path.stat().st_size == 0:
        return f"{path}: {_empty_file(path)}"
    return None


def _use_onnx(artifact: Path) -> str:
    """Point at the same build's ONNX artifact of the same precision (OUT/gguf/NAME.int8.gguf →
    OUT/onnx/NAME.int8.onnx), found through the manifest when there is one."""
    build = artifact.parent.parent
    onnx = _onnx_artifacts(build, precision_of=artifact) if _is_build_dir(build) else []
    return f"use the .onnx artifact of the same build{f': {onnx[0]}' if onnx else ''}"


def _onnx_artifacts(build: Path, precision_of: Path | None = None) -> list[Path]:
    """The build's ONNX artifacts, int8 first (what say runs): the manifest's, of the same precision as
    `precision_of` when that file is one of its artifacts; without a manifest, the onnx/ folder's."""
    from voxport.manifest import read_manifest

    try:
        artifacts = read_manifest(build).artifacts
    except BadInput:
        found = sorted((build / "onnx").glob("*.onnx")) if (build / "onnx").is_dir() else []
        return sorted(found, key=lambda p: (".int8." not in p.name, len(p.name), p.name))
    precision = None
    if precision_of is not None:
        rel = precision_of.absolute().relative_to(build.absolute()).as_posix()
        owners = [a for a in artifacts if a.path == rel or any(f.path == rel for f in a.files)]
        precision = owners[0].precision if owners else None
    own = [a for a in artifacts if a.layout is None]  # not another runtime's layout (sherpa-onnx files)
    onnx = [a for a in own if a.format == "onnx" and precision in (None, a.precision)]
    return [build / a.path for a in sorted(onnx, key=lambda a: a.precision != "int8")]
