"""Palettized (lookup-table) Core ML weights, as a recipe option instead of linear int codes.

Palettization is a different encoding from voxport's linear codes: each weight (or group of output
channels) gets a table of ``2**nbits`` float values chosen by k-means, and the weight stores indices
into it. coremltools computes the tables itself (``ct.optimize.coreml.palettize_weights``), so these
weights are re-quantized and are NOT bit-identical to the ONNX / GGUF / linear Core ML ones; parity
measures what they cost. What voxport keeps from the plan is *which* weights are compressed: exactly
the ones stored as `QuantizedTensor` (the plan's quantizable weights), never biases, norms or weights
the plan kept in float, so a palettized artifact and a linear one compress the same set.

It works on an ``MLModel`` (an mlprogram), because that is the level coremltools' optimizer API works
at; the weights are found in it by value, with the same index as `compress_program`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from voxport.errors import BadInput
from voxport.export.coreml.weights import Stored, WeightIndex, const_ops
from voxport.quantize.tensor import QuantizedTensor

#: the suffix coremltools' palettizer gives the op that replaces a const
_PALETTIZED_SUFFIX = "_palettized"


@dataclass
class PalettizeResult:
    """The palettized model and what happened to each quantizable weight.

    palettized: weight name → name of the const op that was palettized.
    unplaced:   quantizable weights not found as a const op (manifest ``skipped_weights`` rows).
    bits_per_weight: index bits plus lookup-table bits over the palettized weights' elements.
    """

    model: Any
    palettized: dict[str, str] = field(default_factory=dict)
    unplaced: list[dict[str, str]] = field(default_factory=list)
    bits_per_weight: float = 0.0


def load_program(mlmodel: Any) -> Any:
    """The MIL program inside an mlprogram ``MLModel`` (works without loading the model, i.e. on Linux)."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise BadInput("coreml: palettization needs an mlprogram model (convert_to='mlprogram')")
    return milproto_load(spec, spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)


def palettize_model(
    mlmodel: Any,
    weights: Mapping[str, Stored],
    state_dict: Mapping[str, Any],
    *,
    nbits: Literal[4, 8] = 4,
    mode: str = "kmeans",
    granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor",
    group_size: int = 32,
) -> PalettizeResult:
    """Palettize, with ``nbits``-bit lookup tables, the weights the plan quantized; return a new model.

    `weights` is ``QuantizedModel.weights`` (only which entries are `QuantizedTensor` matters);
    `state_dict` holds the fp32 values the model was converted from, which is how the const ops are
    found. ``granularity="per_grouped_channel"`` gives every ``group_size`` output channels their own
    table (finer, larger); ``per_tensor`` is one table per weight.
    """
    import coremltools as ct
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig

    if nbits not in (4, 8):
        raise BadInput(f"coreml: palettization nbits must be 4 or 8, got {nbits!r}")
    wanted = [name for name, value in weights.items() if isinstance(value, QuantizedTensor)]
    index = WeightIndex(state_dict, wanted)
    program = load_program(mlmodel)
    found: dict[str, str] = {}
    for op in const_ops(program.functions["main"]):
        match = index.lookup(op.outputs[0].val, op.name)
        if match is not None:
            found.setdefault(match[0], op.name)

    result = PalettizeResult(model=mlmodel)
    for name in wanted:
        if name not in found:
            result.unplaced.append(
                {
                    "name": name,
                    "requested": f"int{weights[name].bits}",  # type: ignore[union-attr]
                    "stored": "absent",
                    "reason": "not found as a const op in the Core ML program",
                }
            )
    if not found:
        return result

    op_config = OpPalettizerConfig(
        mode=mode,
        nbits=nbits,
        granularity=granularity,
        group_size=group_size,
        # every weight the plan chose is palettized, however small: the plan already decided
        weight_threshold=0,
    )
    config = OptimizationConfig(op_name_configs={op_name: op_config for op_name in found.values()})
    result.model = ct.optimize.coreml.palettize_weights(mlmodel, config)
    result.palettized = dict(found)
    result.bits_per_weight = _lut_bits_per_weight(load_program(result.model), set(found.values()))
    return result


def _lut_bits_per_weight(program: Any, const_names: set[str]) -> float:
    """(index bits + table bits) / elements over the ``constexpr_lut_to_dense`` ops that replaced them."""
    bits = 0
    elements = 0
    for op in _all_ops(program.functions["main"]):
        if op.op_type != "constexpr_lut_to_dense":
            continue
        if op.name.removesuffix(_PALETTIZED_SUFFIX) not in const_names:
            continue
        indices, lut = op.indices, op.lut
        bits += int(np.prod(indices.shape)) * indices.dtype.get_bitwidth()
        bits += int(np.prod(lut.shape)) * lut.dtype.get_bitwidth()
        elements += int(np.prod(op.outputs[0].shape))
    return bits / max(elements, 1)


def _all_ops(block: Any) -> list[Any]:
    out = []
    for op in block.operations:
        for inner in op.blocks:
            out.extend(_all_ops(inner))
        out.append(op)
    return out
