"""Write a family's ONNX runtime layout (`families/layouts/onnx.py: OnnxLayout`) into a directory.

The same steps as voxport's own ONNX artifact, applied to the layout's graphs: trace each graph in fp32
once per layout and opset, give every copy the precision's stored weights (`apply_stored_weights`, so an
int8 layout holds the very int8 codes of the int8 artifact), stamp the layout's metadata, check, and
write the directory atomically (a temporary directory renamed into place) with the side files.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from pathlib import Path

import onnx

from voxport import __version__
from voxport.export.onnx.trace import trace_graph
from voxport.export.onnx.weights import Stored, apply_stored_weights
from voxport.families.layouts.onnx import OnnxLayout
from voxport.io import atomic_path

#: fp32 traces per layout object and opset (weights are applied to copies), so writing several
#: precisions of one model traces the layout's graphs once, as the main graphs are (`trace_all`)
_TRACED: weakref.WeakKeyDictionary[OnnxLayout, dict[int, list[tuple[str, onnx.ModelProto]]]] = (
    weakref.WeakKeyDictionary()
)


def traced_layout(layout: OnnxLayout, opset: int) -> list[tuple[str, onnx.ModelProto]]:
    """(graph name, fp32 trace) per graph of the layout, traced on first use."""
    cache = _TRACED.setdefault(layout, {})
    if opset not in cache:  # one trace per layout and opset: precisions only change the weights
        cache[opset] = [(spec.name, trace_graph(spec, opset)) for spec in layout.graphs()]
    return cache[opset]


def write_onnx_layout(
    layout: OnnxLayout,
    out_dir: Path,
    weights: Mapping[str, Stored],
    *,
    opset: int,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write the layout into `out_dir` atomically; returns every file by role (graph name, or the side
    file's name). `weights`: the precision's stored weights; `metadata` goes after the layout's own
    metadata_props (e.g. the precision), then `graph`.

    ValueError when the model cannot take the layout (`layout.unsupported`)."""
    if layout.unsupported:
        raise ValueError(f"{layout.name} layout: {layout.unsupported}")
    props = {**layout.metadata, **(metadata or {})}
    paths: dict[str, Path] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name, traced in traced_layout(layout, opset):
            proto = onnx.ModelProto()
            proto.CopyFrom(traced)
            apply_stored_weights(proto, weights, opset=opset)
            del proto.metadata_props[:]
            for key, value in {**props, "graph": name}.items():
                proto.metadata_props.add(key=key, value=str(value))
            proto.producer_name, proto.producer_version = "voxport", __version__
            onnx.checker.check_model(proto)
            onnx.save_model(proto, str(tmp / f"{name}.onnx"))
            paths[name] = out_dir / f"{name}.onnx"
        for file_name, data in layout.files.items():
            (tmp / file_name).write_bytes(data)
            paths[file_name] = out_dir / file_name
    return paths


__all__ = ["traced_layout", "write_onnx_layout"]
