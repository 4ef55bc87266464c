"""`voxport inspect`: what a checkpoint, an artifact or a build directory holds, in numbers."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

from voxport.errors import BadInput
from voxport.export.registry import format_for_path


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
    adapter = format_for_path(path)
    if adapter is not None:
        return {"kind": adapter.name, "path": str(path), **adapter.describe(path)}
    return _inspect_checkpoint(path, trust_pickle=trust_pickle)


def _inspect_checkpoint(path: Path, *, trust_pickle: bool) -> dict[str, Any]:
    from voxport.families.registry import load_model

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


def _inspect_build(path: Path) -> dict[str, Any]:
    from voxport.manifest import read_manifest

    manifest = read_manifest(path)
    return {"kind": "build", "path": str(path), **manifest.model_dump(mode="json")}


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

    `say` runs ONNX artifacts (in ONNX Runtime), checkpoints (in torch) and, on macOS, Core ML packages
    (in Core ML). A GGUF file needs a llama.cpp-style runtime: `voxport validate` checks it, but there
    is nothing here to speak with it."""
    runs = "say runs ONNX artifacts and checkpoints"
    if _is_build_dir(path):
        example = _onnx_artifacts(path)
        instead = f"e.g. {example[0]}" if example else "e.g. DIR/onnx/NAME.int8.onnx"
        return f"{path} is a build directory; pass one of its artifacts, {instead}"
    if path.suffix == ".gguf" and path.is_file():
        return f"{path}: {runs}; this is a GGUF file (for llama.cpp-style runtimes); {_use_onnx(path)}"
    if path.suffix == ".mlpackage" and sys.platform != "darwin":
        return (
            f"{path}: a Core ML package speaks through Core ML itself (MLModel.predict), which only macOS "
            f"has; here, {_use_onnx(path)}"
        )
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
