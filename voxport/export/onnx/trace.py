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


def trace_graph(spec: GraphSpec, opset: int = MAX_TRACE_OPSET, *, weights: bool = True) -> onnx.ModelProto:
    """`weights=False`: the parameters are left out of the file and stay graph inputs under their
    `model.<name>` names (the streaming exporter stores each one itself, export/onnx/stream.py), and
    the exporter's deduplication of equal initializers, which compares their values, is skipped."""
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
                export_params=weights,
                keep_initializers_as_inputs=None if weights else True,
            )
        except Exception as exc:  # the exporter raises many internal types; name the graph instead
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportFailed(f"ONNX export of graph '{spec.name}' failed: {first}") from exc
        finally:
            for module, training in modes.items():
                module.training = training
    model = onnx.load_from_string(buffer.getvalue())
    _unshare_initializers(model)
    _drop_dangling_initializers(model)
    return model


def _unshare_initializers(model: onnx.ModelProto) -> None:
    """Give every parameter its own initializer again where the exporter merged identical ones.

    The TorchScript exporter stores parameters with identical values once and names the others as
    `Identity(kept)` outputs (freshly initialised norms, all ones; frozen fine-tuned copies). Two things
    break on that: ONNX Runtime's EliminateIdentity pass (1.32, any optimisation level) drops the
    Identity but leaves its consumers reading the vanished name, so the session refuses the file ("is
    not a graph input, initializer, or output"); and `apply_stored_weights` only finds parameters that
    are initializers, so a merged one would silently keep the other's precision. A copy under its own
    name costs the bytes the model has anyway."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in graph.node:  # topological: an Identity of an Identity finds its source already copied
        source = node.input[0] if node.op_type == "Identity" and node.input else None
        if source in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[source])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _drop_dangling_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node reads (the exporter can leave some behind after deduplication)."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
