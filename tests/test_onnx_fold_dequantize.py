"""export.onnx.fold_dequantize: integer weights as Cast → Mul (→ Reshape) instead of DequantizeLinear.

The file must compute exactly the dequantized floats in fp32 (what voxport's torch reference of the
quantized model computes), no DequantizeLinear may be left for ONNX Runtime to run per call, and every
encoding must fold: per-channel int8 on a Conv and on a transposed MatMul, blocked int8 and int4, an
LSTM's matrices."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from voxport.errors import BadInput
from voxport.export.onnx.weights import apply_stored_weights
from voxport.quantize.methods import quantize


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.conv = nn.Conv1d(32, 64, 3, padding=1)
        self.model.linear = nn.Linear(64, 64)
        self.model.lstm = nn.LSTM(64, 32, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.model.conv(x).transpose(1, 2)
        h, _ = self.model.lstm(self.model.linear(h))
        return h


def _traced() -> onnx.ModelProto:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(
        _Net().eval(),
        (torch.randn(1, 32, 10),),
        buffer,
        input_names=["x"],
        output_names=["y"],
        opset_version=18,
        dynamo=False,
        do_constant_folding=False,
    )
    return onnx.load_from_string(buffer.getvalue())


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize(
    ("precision", "int8_block"),
    [("int8", None), ("int8", 32), ("int4", None)],
    ids=["int8", "int8-blocks", "int4"],
)
def test_folded_weights_equal_dequantize_linear_exactly(precision: str, int8_block: int | None) -> None:
    traced = _traced()
    params = {
        i.name[len("model.") :]: onnx.numpy_helper.to_array(i)
        for i in traced.graph.initializer
        if i.name.startswith("model.") and i.name.endswith(("weight", "weight_ih_l0", "weight_hh_l0"))
    }
    weights = {
        k: quantize(v, precision, int8_block_size=int8_block) for k, v in params.items() if v.ndim >= 2
    }
    x = np.random.default_rng(1).standard_normal((1, 32, 10)).astype(np.float32)
    variants = {
        "dequantize-linear": (weights, False),
        "folded": (weights, True),
        "float": ({k: q.dequantize().astype(np.float32) for k, q in weights.items()}, False),
    }
    outputs = {}
    for name, (stored_weights, fold) in variants.items():
        model = onnx.ModelProto()
        model.CopyFrom(traced)
        assert apply_stored_weights(model, stored_weights, opset=21, fold=fold) == set(weights)
        ops = {n.op_type for n in model.graph.node}
        assert ("DequantizeLinear" in ops) == (name == "dequantize-linear")
        outputs[name] = _run(model, x)
    # folded: exactly the dequantized floats in fp32 compute. DequantizeLinear is not: ONNX Runtime fuses
    # it with the MatMul into an int8-activation kernel, which moves the output by ~1e-3 here
    assert np.array_equal(outputs["folded"], outputs["float"])
    assert not np.array_equal(outputs["dequantize-linear"], outputs["float"])


def test_fold_and_matmulnbits_are_exclusive() -> None:
    from voxport.export.onnx.adapter import OnnxExportConfig

    with pytest.raises((BadInput, ValueError), match="choose one"):
        OnnxExportConfig(fold_dequantize=True, matmul_accuracy_level=4)
