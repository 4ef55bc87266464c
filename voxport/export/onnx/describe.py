"""What an ONNX file holds, in numbers (`voxport inspect x.onnx`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from voxport.errors import BadInput

#: bits per element of each initializer data type
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


def describe_onnx(path: Path) -> dict[str, Any]:
    """Size, opset, metadata, inputs and outputs, and the weights by data type (scales left out)."""
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
    # MatMulNBits (export.onnx.matmul_accuracy_level) packs its codes in bytes: count them as codes
    nbits = {
        n.input[1]: next(a.i for a in n.attribute if a.name == "bits")
        for n in model.graph.node
        if n.op_type == "MatMulNBits" and len(n.input) > 1
    }
    elements: Counter[str] = Counter()
    bits = 0
    weights = 0
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        dtype = TensorProto.DataType.Name(init.data_type)
        bits += count * _ONNX_BITS.get(dtype, 32)
        if init.name in nbits:
            count, dtype = count * 8 // nbits[init.name], f"INT{nbits[init.name]}"
        if init.name.endswith(scale_like):
            continue
        elements[dtype] += count
        weights += count
    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "bytes": path.stat().st_size,
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "metadata": {p.key: p.value for p in model.metadata_props},
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "parameters": weights,
        "parameters_by_precision": dict(elements),
        "bits_per_weight": round(bits / max(weights, 1), 3),
        "dequantize_nodes": ops.get("DequantizeLinear", 0),
        "matmulnbits_nodes": ops.get("MatMulNBits", 0),
        "nodes": sum(ops.values()),
    }
