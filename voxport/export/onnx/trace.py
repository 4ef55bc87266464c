"""Trace a family graph into an fp32 ONNX model whose initializers keep their parameter names.

The TorchScript exporter is used (not dynamo): transformers' input checks trip the dynamo exporter
(`aten._is_all_true`), and tracing handles the families' data-dependent frame counts. Constant
folding is off so that each weight stays a named initializer (a folded Linear weight becomes an
anonymous transposed copy); ONNX Runtime folds the remaining shape arithmetic at load time.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

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
    neither the deduplication of equal initializers nor the graph-level shape inference sees their
    values (`_valueless_shape_inference`)."""
    buffer = io.BytesIO()
    # The exporter restores the *root* module's training flag recursively afterwards; a graph wrapper
    # built around the family's model is a fresh nn.Module (training=True), so without this the shared
    # model would be left in training mode (dropout, layerdrop) for every later torch run.
    modes = {module: module.training for module in spec.module.modules()}
    valueless = nullcontext() if weights else _valueless_shape_inference()
    with warnings.catch_warnings(), torch.no_grad(), valueless:
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


@contextmanager
def _valueless_shape_inference() -> Iterator[None]:
    """The TorchScript exporter's graph-level ONNX shape inference without the parameters' values.

    That pass (run twice per export, after the ops are already converted) hands every parameter's
    value to ONNX shape inference; for a streamed model's stride-0 placeholders that means
    materialising them: ~4.3 GB of transient copies for Voxtral's backbone (its 1.6 GB text table
    among them), measured at full size. Shapes and types come from the traced graph's input types;
    only value-dependent shapes of constant-folded subgraphs could be missed, which the
    constant-folding-free trace has none of (the streamed graphs equal the normal export's,
    tests/test_stream_export.py)."""
    original = torch._C._jit_pass_onnx_graph_shape_type_inference

    def without_values(graph: Any, params: Any, opset: int) -> Any:
        return original(graph, {}, opset)

    torch._C._jit_pass_onnx_graph_shape_type_inference = without_values
    try:
        yield
    finally:
        torch._C._jit_pass_onnx_graph_shape_type_inference = original


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
