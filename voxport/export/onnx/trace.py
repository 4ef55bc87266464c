"""Trace a family graph into an fp32 ONNX model whose initializers keep their parameter names.

The TorchScript exporter is used (not dynamo): transformers' input checks trip the dynamo exporter
(`aten._is_all_true`), and tracing handles the families' data-dependent frame counts. Constant
folding is off so that each weight stays a named initializer (a folded Linear weight becomes an
anonymous transposed copy); ONNX Runtime folds the remaining shape arithmetic at load time.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch

from voxport.errors import VoxportError
from voxport.families.base import GraphSpec

#: the newest opset the TorchScript exporter emits; the file is stamped later with the recipe's opset
MAX_TRACE_OPSET = 18


class ExportFailed(VoxportError):
    """The torch graph could not be traced into ONNX (an unsupported op or shape)."""


def trace_graph(spec: GraphSpec, opset: int = MAX_TRACE_OPSET) -> onnx.ModelProto:
    buffer = io.BytesIO()
    # The exporter restores the *root* module's training flag recursively afterwards; a graph wrapper
    # built around the family's model is a fresh nn.Module (training=True), so without this the shared
    # model would be left in training mode (dropout, layerdrop) for every later torch run.
    modes = {module: module.training for module in spec.module.modules()}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                spec.module,
                spec.example_inputs,
                buffer,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes,
                opset_version=min(opset, MAX_TRACE_OPSET),
                dynamo=False,
                do_constant_folding=False,
            )
        except Exception as exc:  # the exporter raises many internal types; name the graph instead
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportFailed(f"ONNX export of graph '{spec.name}' failed: {first}") from exc
        finally:
            for module, training in modes.items():
                module.training = training
    model = onnx.load_from_string(buffer.getvalue())
    _drop_dangling_initializers(model)
    return model


def _drop_dangling_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node reads (the exporter can leave some behind after deduplication)."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
