"""Write one ONNX file per family graph for one precision, atomically, with runtime metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from voxport import __version__
from voxport.errors import BadInput
from voxport.export.onnx.matmulnbits import use_matmulnbits
from voxport.export.onnx.trace import trace_graph
from voxport.export.onnx.weights import Stored, apply_stored_weights
from voxport.families.base import FamilyModel
from voxport.io import atomic_path
from voxport.quantize.tensor import QuantizedTensor

#: the recipe default (export.onnx.opset): blocked int4 DequantizeLinear needs 21
DEFAULT_OPSET = 21


@dataclass(frozen=True)
class ExportedFile:
    graph: str
    path: Path
    primary: bool
    #: weight names found in this graph and stored in their chosen encoding
    stored: frozenset[str] = frozenset()


def trace_all(
    model: FamilyModel, opset: int = DEFAULT_OPSET
) -> dict[str, tuple[onnx.ModelProto, bool, dict[str, str]]]:
    """Trace every graph once in fp32; precisions are applied to copies of these."""
    return {spec.name: (trace_graph(spec, opset), spec.primary, spec.metadata) for spec in model.graphs()}


def graph_levels(level: int | Mapping[str, int] | None, graphs: list[str]) -> dict[str, int]:
    """The MatMulNBits accuracy level of each graph (absent: keep DequantizeLinear → MatMul)."""
    if level is None:
        return {}
    if isinstance(level, int):
        return dict.fromkeys(graphs, level)
    unknown = sorted(set(level) - set(graphs))
    if unknown:
        raise BadInput(
            f"export.onnx.matmul_accuracy_level: no graph named {', '.join(unknown)} "
            f"(this model's graphs: {', '.join(graphs)})"
        )
    return dict(level)


def _file_name(stem: str, precision: str, graph: str, primary: bool) -> str:
    return f"{stem}.{precision}.onnx" if primary else f"{stem}.{precision}.{graph}.onnx"


def export_onnx(
    model: FamilyModel,
    weights: Mapping[str, Stored],
    out_dir: Path,
    *,
    stem: str,
    precision: str,
    metadata: Mapping[str, str],
    traced: dict[str, tuple[onnx.ModelProto, bool, dict[str, str]]] | None = None,
    opset: int = DEFAULT_OPSET,
    matmul_accuracy_level: int | Mapping[str, int] | None = None,
    fold_dequantize: bool = False,
) -> list[ExportedFile]:
    """Export all graphs of `model` with `weights` stored in their chosen encodings.

    `matmul_accuracy_level` (one level, or graph name → level; None: portable DequantizeLinear →
    MatMul) writes quantized Linear weights as ONNX Runtime's MatMulNBits with that accuracy level."""
    traced = traced if traced is not None else trace_all(model, opset)
    levels = graph_levels(matmul_accuracy_level, list(traced))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for graph, (proto, primary, graph_meta) in traced.items():
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        stored = apply_stored_weights(copy, weights, opset=opset, fold=fold_dequantize)
        level = levels.get(graph)
        if level is not None:
            use_matmulnbits(copy, level)
        props = {
            "family": model.family,
            "graph": graph,
            "precision": precision,
            "voxport_version": __version__,
            **graph_meta,
            **metadata,
            **({"matmul_accuracy_level": str(level)} if level is not None else {}),
        }
        del copy.metadata_props[:]
        for key, value in props.items():
            copy.metadata_props.add(key=key, value=str(value))
        copy.producer_name = "voxport"
        copy.producer_version = __version__
        onnx.checker.check_model(copy)
        path = out_dir / _file_name(stem, precision, graph, primary)
        with atomic_path(path) as tmp:
            onnx.save_model(copy, str(tmp))
        files.append(ExportedFile(graph=graph, path=path, primary=primary, stored=frozenset(stored)))
    return files


def unplaced_quantized(weights: Mapping[str, Stored], files: list[ExportedFile]) -> list[dict[str, str]]:
    """Quantized weights that no exported graph took: they would silently stay fp32, so list them."""
    placed = set().union(*(f.stored for f in files)) if files else set()
    return [
        {
            "name": name,
            "requested": f"int{value.bits}",
            "stored": "absent",
            "reason": "not found as an initializer in any exported ONNX graph",
        }
        for name, value in weights.items()
        if isinstance(value, QuantizedTensor) and name not in placed
    ]
