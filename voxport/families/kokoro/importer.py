"""Turn the published Kokoro int8 ONNX graph back into a full-precision checkpoint in KModel's layout.

The graph (kokoro-onnx's export of Kokoro v1.0, quantized by ONNX Runtime's dynamic quantizer after
graph optimisation) holds its weights in five integer forms, each dequantized exactly as ONNX Runtime
defines it, (q − zero_point) · scale:

- `MatMulInteger`: int8 [in, out], a scale per output column, zero point 0 → transposed to torch's
  [out, in]. The module is found from the bias the product flows into (a few nodes downstream).
- `ConvInteger`: uint8 with one scale and zero point per tensor. These kernels had weight norm folded
  into them by the exporter, so they are unfolded again (v = W, g = ‖W‖; `checkpoint.unfold`).
  The module comes from the quantizer's node names.
- `DynamicQuantizeLSTM`: W [dirs, in, 4H] and R [dirs, H, 4H] int8 with a scale and zero point per
  direction, gates in ONNX's order i, o, f, c → torch's [4H, in] in i, f, g(c), o order; B [dirs, 8H]
  is [Wb | Rb].
- embeddings: `Gather` of an int8 table followed by `DequantizeLinear` with one scale.
- float initializers that the quantizer left alone, under their parameter names or feeding a float
  Conv/ConvTranspose/MatMul.

Scale and zero-point initializers are shared between layers with equal values, so they are read from
each node's inputs, never guessed from names. What the graph does not hold is filled with the identity
it computed: InstanceNorm's affine weights (the optimised graph has none: ones and zeros) and ALBERT's
pooler (unused by Kokoro: zeros). The result is what the published graph computes without its
activation quantization; `describe()` and the manifest say that its weights were int8 at the source.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from voxport.errors import BadInput
from voxport.families.kokoro.checkpoint import fold
from voxport.families.kokoro.modules import KokoroNet

#: what the manifest and README say about a checkpoint imported from the published int8 graph
PROVENANCE = (
    "weights dequantized from the published int8 ONNX graph (kokoro-onnx's Kokoro v1.0 export): "
    "'fp32' here means the source's dequantized weights, not hexgrad's original float checkpoint"
)

#: the graph's module scopes → KModel's submodules
_SCOPES = (
    ("encoder.bert_encoder", "bert_encoder"),
    ("encoder.bert", "bert"),
    ("encoder.text_encoder", "text_encoder"),
    ("encoder.predictor", "predictor"),
    ("decoder.decoder", "decoder"),
)
#: DynamicQuantizeLSTM node scopes → KModel's LSTMs
_LSTMS = {
    "/encoder/text_encoder/lstm/": "text_encoder.lstm",
    "/encoder/predictor/text_encoder/lstms.0/": "predictor.text_encoder.lstms.0",
    "/encoder/predictor/text_encoder/lstms.2/": "predictor.text_encoder.lstms.2",
    "/encoder/predictor/text_encoder/lstms.4/": "predictor.text_encoder.lstms.4",
    "/encoder/predictor/lstm/": "predictor.lstm",
    "/encoder/shared/": "predictor.shared",
}
INPUTS = ("tokens", "style", "speed")


def _kmodel_name(onnx_name: str) -> str | None:
    for graph_scope, module in _SCOPES:
        if onnx_name == graph_scope or onnx_name.startswith(graph_scope + "."):
            return module + onnx_name[len(graph_scope) :]
    return None


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.nodes = list(model.graph.node)
        self.init = {i.name: i for i in model.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.init[name])

    def dequantize(self, q: str, scale: str, zero: str, axis: int | None = None) -> np.ndarray:
        values = self.array(q).astype(np.float32)
        s = self.array(scale).astype(np.float32)
        z = self.array(zero).astype(np.float32)
        if s.ndim == 1 and s.size > 1:
            shape = [1] * values.ndim
            shape[axis if axis is not None else 0] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        return (values - z) * s

    def bias_downstream(self, node: onnx.NodeProto, depth: int = 4) -> str | None:
        """The `.bias` initializer the node's output is added to within `depth` nodes."""
        frontier = [node]
        for _ in range(depth):
            following = []
            for n in frontier:
                for out in n.output:
                    for c in self.consumers[out]:
                        for name in c.input:
                            if name.endswith(".bias") and name in self.init:
                                return name
                        following.append(c)
            frontier = following
        return None


def _gates_to_torch(a: np.ndarray, hidden: int) -> np.ndarray:
    """ONNX's gate blocks (i, o, f, c) along axis 0 → torch's (i, f, g, o)."""
    i, o, f, c = (a[k * hidden : (k + 1) * hidden] for k in range(4))
    return np.concatenate([i, f, c, o], axis=0)


def read_published_onnx(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Every weight of `expected` (KModel-layout names and shapes) recovered from the graph at `path`."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends for anything that is not a model
        raise BadInput(
            f"{path}: not a readable ONNX model ({type(exc).__name__}); give Kokoro's .onnx"
        ) from None
    names = [i.name for i in model.graph.input]
    if tuple(names) != INPUTS:
        raise BadInput(
            f"{path}: not a Kokoro graph (inputs {names}, expected {list(INPUTS)}: kokoro-onnx's Kokoro "
            "v1.0 export)"
        )
    g = _Graph(model)
    out: dict[str, np.ndarray] = {}

    def put(name: str | None, value: np.ndarray, what: str) -> None:
        if name is None or name not in expected:
            return
        if tuple(value.shape) != expected[name]:
            raise BadInput(f"{path}: {what} for {name} has shape {value.shape}, Kokoro's is {expected[name]}")
        out.setdefault(name, np.ascontiguousarray(value, dtype=np.float32))

    def put_kernel(module: str | None, w: np.ndarray, what: str) -> None:
        if module is None:
            return
        if module + ".weight_v" in expected:  # weight norm folded by the exporter: unfold
            norm = np.sqrt((w.astype(np.float64) ** 2).reshape(w.shape[0], -1).sum(1))
            v = w.copy()
            v[norm == 0] = 1.0  # a kernel row that int8 zeroed: g = 0 gives weight 0 for any v
            put(module + ".weight_v", v, what)
            put(module + ".weight_g", norm.reshape([-1] + [1] * (w.ndim - 1)).astype(np.float32), what)
        else:
            put(module + ".weight", w, what)

    for name, init in g.init.items():  # float weights kept under their parameter names
        if init.data_type == onnx.TensorProto.FLOAT:
            put(_kmodel_name(name), g.array(name), "a float initializer")
    for node in g.nodes:
        handler = _HANDLERS.get(node.op_type)
        if handler is not None:
            handler(g, node, put, put_kernel)
    for name, shape in expected.items():  # what the optimised graph computes as identity
        if re.search(r"\.norm\.weight$", name):
            put(name, np.ones(shape, np.float32), "")
        elif re.search(r"\.norm\.bias$", name) or name.startswith("bert.pooler."):
            put(name, np.zeros(shape, np.float32), "")
    missing = sorted(set(expected) - set(out))
    if missing:
        raise BadInput(
            f"{path}: {len(missing)} of Kokoro's {len(expected)} weights are not in this graph (e.g. "
            f"{missing[0]}); give the published Kokoro v1.0 ONNX (kokoro-onnx's export)"
        )
    return out


Put = Callable[[str | None, np.ndarray, str], None]
PutKernel = Callable[[str | None, np.ndarray, str], None]


def _matmul_integer(g: _Graph, node: onnx.NodeProto, put: Put, put_kernel: PutKernel) -> None:
    weight, zero = node.input[1], node.input[3]
    if weight not in g.init:
        return
    bias = g.bias_downstream(node)
    module = _kmodel_name(bias[: -len(".bias")]) if bias else None
    scale = weight.removesuffix("_quantized") + "_scale"
    put_kernel(module, g.dequantize(weight, scale, zero, axis=1).T, "MatMulInteger")


def _conv_module(g: _Graph, node: onnx.NodeProto) -> str | None:
    for consumer in g.consumers[node.output[0]]:
        found = re.match(r"(.*)\.bias_quantizedbias_add", consumer.name)
        if found:
            return _kmodel_name(found.group(1))
    found = re.match(r"/(encoder|decoder/decoder)/(.*)/Conv_quant", node.name)  # convolutions without bias
    if found:
        scope = found.group(2).replace("/", ".")
        return ("predictor." if found.group(1) == "encoder" else "decoder.") + scope
    return None


def _conv_integer(g: _Graph, node: onnx.NodeProto, put: Put, put_kernel: PutKernel) -> None:
    weight = node.input[1]
    if weight not in g.init:
        return
    scale = weight.removesuffix("_quantized") + "_scale"
    put_kernel(_conv_module(g, node), g.dequantize(weight, scale, node.input[3]), "ConvInteger")


def _float_conv(g: _Graph, node: onnx.NodeProto, put: Put, put_kernel: PutKernel) -> None:
    if node.input[1] not in g.init or len(node.input) < 3 or not node.input[2].endswith(".bias"):
        return
    put_kernel(_kmodel_name(node.input[2][: -len(".bias")]), g.array(node.input[1]), node.op_type)


def _float_matmul(g: _Graph, node: onnx.NodeProto, put: Put, put_kernel: PutKernel) -> None:
    if node.input[1] not in g.init:
        return
    bias = g.bias_downstream(node)
    if bias is not None:
        put_kernel(_kmodel_name(bias[: -len(".bias")]), g.array(node.input[1]).T, "MatMul")


def _gather(g: _Graph, node: onnx.NodeProto, put: Put, put_kernel: PutKernel) -> None:
    table = node.input[0]
    if not table.endswith("_quantized") or table not in g.init:
        return
    dq = g.consumers[node.output[0]][0]
    put(
        _kmodel_name(table.removesuffix("_quantized")),
        g.dequantize(table, dq.input[1], dq.input[2]),
        "an int8 embedding",
    )


def _lstm(g: _Graph, node: onnx.NodeProto, put: Put, put_kernel: PutKernel) -> None:
    module = next((m for scope, m in _LSTMS.items() if node.name.startswith(scope)), None)
    if module is None:
        return
    _, w, r, b, *_rest = node.input
    w_scale, w_zero, r_scale, r_zero = node.input[8:12]
    hidden = next(a.i for a in node.attribute if a.name == "hidden_size")

    def per_direction(q: str, scale: str, zero: str) -> np.ndarray:
        s = g.array(scale).astype(np.float32).reshape(-1, 1, 1)
        z = g.array(zero).astype(np.float32).reshape(-1, 1, 1)
        return (g.array(q).astype(np.float32) - z) * s

    weights, recurrent, bias = (
        per_direction(w, w_scale, w_zero),
        per_direction(r, r_scale, r_zero),
        g.array(b),
    )
    for direction, suffix in ((0, ""), (1, "_reverse")):
        what = "DynamicQuantizeLSTM"
        put(f"{module}.weight_ih_l0{suffix}", _gates_to_torch(weights[direction].T, hidden), what)
        put(f"{module}.weight_hh_l0{suffix}", _gates_to_torch(recurrent[direction].T, hidden), what)
        put(f"{module}.bias_ih_l0{suffix}", _gates_to_torch(bias[direction, : 4 * hidden], hidden), what)
        put(f"{module}.bias_hh_l0{suffix}", _gates_to_torch(bias[direction, 4 * hidden :], hidden), what)


_HANDLERS: dict[str, Callable[[_Graph, onnx.NodeProto, Put, PutKernel], None]] = {
    "MatMulInteger": _matmul_integer,
    "ConvInteger": _conv_integer,
    "Conv": _float_conv,
    "ConvTranspose": _float_conv,
    "MatMul": _float_matmul,
    "Gather": _gather,
    "DynamicQuantizeLSTM": _lstm,
}


def kmodel_layout(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """KModel's state-dict names and shapes for `config` (weight norm unfolded: g is [out, 1, ...]).

    The network is built on torch's meta device: only names and shapes are read, and `build` makes
    the real one once the weights are known."""
    from voxport.families.kokoro.checkpoint import weight_normed

    with torch.device("meta"):
        net = KokoroNet(config)
    layout: dict[str, tuple[int, ...]] = {}
    for name, tensor in net.state_dict().items():
        shape = tuple(tensor.shape)
        if weight_normed(name):
            base = name.removesuffix(".weight")
            layout[base + ".weight_g"] = (shape[0],) + (1,) * (len(shape) - 1)
            layout[base + ".weight_v"] = shape
        else:
            layout[name] = shape
    return layout


def published_weights(path: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The graph's weights as KModel-layout torch tensors, checked to fold into Kokoro's layout."""
    arrays = read_published_onnx(path, kmodel_layout(config))
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    fold(tensors)  # fails loudly on a half pair before anything is written
    return tensors
