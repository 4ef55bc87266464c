"""`quantize.int8_block_size`: int8 in blocks of 32 with fp16 scales, the codes of GGUF Q8_0.

The cross-format check (Core ML constexpr, GGUF Q8_0 through gguf-py, ONNX DequantizeLinear on the
same codes) is `test_coreml_weights.test_int8_blocks_match_gguf_q8_0_and_onnx`; here: the arithmetic,
the plan, the stage's file and the cache key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gq
from safetensors import safe_open

from voxport.export.gguf.writer import pack_q8_0
from voxport.families.base import FamilyModel
from voxport.pipeline import Build
from voxport.quantize import QuantizedTensor, plan_precisions, quantize, skipped
from voxport.quantize.stage import load_quantized, quantize_model, save_quantized
from voxport.recipe import Recipe


def _gauss(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.02).astype(np.float32)


@pytest.mark.parametrize("method", ["rtn", "mse"])
def test_int8_blocks_are_q8_0_bit_exact(method: str) -> None:
    w = _gauss((48, 96, 3), seed=1)
    q = quantize(w, "int8", method=method, int8_block_size=32)
    assert isinstance(q, QuantizedTensor)
    assert (q.bits, q.block_size, q.scales.shape) == (8, 32, (48, 9))
    # scales rounded to fp16 before the codes were chosen: Q8_0's fp16 d stores them exactly
    assert np.array_equal(q.scales.astype(np.float16).astype(np.float32), q.scales)
    raw = pack_q8_0(q)
    assert raw.shape == (48, 9 * 34)
    from_gguf = gq.dequantize(raw, GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(from_gguf.view(np.uint32), q.dequantize().reshape(48, -1).view(np.uint32))
    # finer scales than one per row: less error on the same weight (rtn 32-blocks vs per-channel)
    per_channel = quantize(w, "int8", method=method)
    assert isinstance(per_channel, QuantizedTensor) and per_channel.block_size == 288
    err_blocked = float(np.mean((q.dequantize() - w) ** 2))
    err_channel = float(np.mean((per_channel.dequantize() - w) ** 2))
    assert err_blocked < 0.85 * err_channel


def test_gguf_own_q8_0_differs_only_by_fp16_scale_rounding() -> None:
    """gguf-py picks codes with the unrounded scale; we round the scale first. A handful of codes move
    by one, none more."""
    w = _gauss((64, 256), seed=2)
    q = quantize(w, "int8", int8_block_size=32)
    assert isinstance(q, QuantizedTensor)
    theirs = gq.quantize(w, GGMLQuantizationType.Q8_0).reshape(-1, 34)[:, 2:].view(np.int8)
    ours = q.codes.reshape(-1, 32)
    moved = np.abs(theirs.astype(np.int16) - ours.astype(np.int16))
    assert moved.max() == 1 and 0 < int((moved > 0).sum()) < ours.size // 100


WEIGHTS = {
    "enc.linear.weight": (64, 96),
    "enc.linear.bias": (64,),
    "dec.conv.weight": (32, 16, 7),  # 112 columns: 3 full blocks and a partial one
    "dec.narrow.weight": (8, 16),  # 16 columns < 32
}
QUANTIZABLE = {"enc.linear.weight", "dec.conv.weight", "dec.narrow.weight"}


def test_plan_blocks_int8_and_keeps_narrow_weights_per_row() -> None:
    plan = plan_precisions(WEIGHTS, QUANTIZABLE, "int8", int8_block_size=32)
    assert {n: d.int8_block_size for n, d in plan.items()} == {
        "enc.linear.weight": 32,
        "enc.linear.bias": None,
        "dec.conv.weight": 32,
        "dec.narrow.weight": None,
    }
    narrow = plan["dec.narrow.weight"]
    assert narrow.precision == "int8" and "16 < 32" in str(narrow.reason)
    assert skipped(plan) == []  # still int8: nothing stored above what was asked
    assert plan["enc.linear.weight"].reason is None
    # without the option (and at int4's int8 fallbacks) int8 stays per row
    assert not [d for d in plan_precisions(WEIGHTS, QUANTIZABLE, "int8").values() if d.int8_block_size]
    int4 = plan_precisions(WEIGHTS, QUANTIZABLE, "int4", int8_block_size=32)
    assert (int4["dec.narrow.weight"].precision, int4["dec.narrow.weight"].int8_block_size) == ("int8", None)


def test_stage_stores_blocks_and_per_channel_files_do_not_change(
    tiny_vits: FamilyModel, tmp_path: Path
) -> None:
    blocked = quantize_model(tiny_vits, "int8", int8_block_size=32)
    per_channel = quantize_model(tiny_vits, "int8")
    q8 = {k: v for k, v in blocked.weights.items() if isinstance(v, QuantizedTensor)}
    assert q8 and {v.block_size for k, v in q8.items() if v.cols >= 32} == {32}
    # fp16 scales per 32 codes: 0.5 bit more per quantized weight than per-row fp16 scales, at most
    assert 0 < blocked.bits_per_weight(scale_bits=16) - per_channel.bits_per_weight(scale_bits=16) < 0.5
    save_quantized(blocked, tmp_path / "b.safetensors")
    save_quantized(per_channel, tmp_path / "c.safetensors")
    back = load_quantized(tmp_path / "b.safetensors")
    assert back.decisions == blocked.decisions
    for name, q in q8.items():
        restored = back.weights[name]
        assert isinstance(restored, QuantizedTensor)
        assert np.array_equal(restored.dequantize(), q.dequantize())
    with safe_open(str(tmp_path / "c.safetensors"), framework="numpy") as f:
        decisions = json.loads((f.metadata() or {})["decisions"])
    assert not [d for d in decisions.values() if "int8_block_size" in d]  # per-row files keep their bytes


def test_only_an_int8_block_size_changes_the_quantize_key(tiny_vits_dir: Path, tmp_path: Path) -> None:
    def key(**quantize: object) -> str:
        data = {"name": "t", "model": str(tiny_vits_dir), "quantize": quantize}
        with Build(Recipe.from_mapping(data, tiny_vits_dir), tmp_path / "out") as build:
            return build.key_quantize("int8")

    plain = key()
    assert key(int8_block_size=None) == plain  # explicit null: today's key
    assert len({plain, key(int8_block_size=32), key(int8_block_size=64)}) == 3


def test_onnx_runtime_runs_int8_blocks_as_the_dequantized_model(
    tiny_vits: FamilyModel, tmp_path: Path
) -> None:
    """ORT runs the blocked int8 graph (blocked DequantizeLinear, fp16 scales cast to fp32) and its
    decoder matches torch running the dequantized weights."""
    from voxport.export.onnx.exporter import export_onnx, trace_all
    from voxport.families.vits import VitsSettings
    from voxport.runtime.ort import OrtRunner
    from voxport.validate.metrics import tensor_snr_db

    qm = quantize_model(tiny_vits, "int8", int8_block_size=32)
    traced = trace_all(tiny_vits)
    exported = export_onnx(
        tiny_vits, qm.weights, tmp_path, stem="t", precision="int8", metadata={}, traced=traced
    )
    files = {f.graph: f.path for f in exported}
    proto = onnx.load(str(files["decoder"]))
    dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    blocked = [n for n in dqs if any(a.name == "block_size" and a.i == 32 for a in n.attribute)]
    assert len(blocked) >= 20
    inits = {i.name: i for i in proto.graph.initializer}
    assert {inits[n.input[0]].data_type for n in blocked} == {onnx.TensorProto.INT8}
    assert all(f"{n.name[: -len('__dq')]}__fp16__scale" in inits for n in blocked)
    # the manifest's ONNX bits/weight counts those fp16 scales: 16 bits less per blocked scale
    from voxport.export.onnx.weights import scale_bits

    q8 = [v for v in qm.weights.values() if isinstance(v, QuantizedTensor)]
    elements = sum(v.size for v in qm.weights.values() if not isinstance(v, QuantizedTensor))
    elements += sum(int(np.prod(v.shape)) for v in q8)
    saved = 16 * sum(v.scales.size for v in q8 if v.block_size < v.cols) / elements
    assert saved > 0.3
    delta = qm.bits_per_weight(scale_bits=32) - qm.bits_per_weight(scale_bits=scale_bits)
    assert delta == pytest.approx(saved, rel=1e-9)

    model = tiny_vits.with_weights(qm.dequantized())
    ids = tiny_vits.text_to_ids("hello world, this is voxport.")
    expected = model.synthesize(model.torch_runner(), ids, VitsSettings())
    enc = expected.graph_outputs["encoder"]
    feed = {k: enc[k] for k in ("m_p", "logs_p")}
    feed["durations"] = expected.durations[None].astype(np.float32)
    frames = int(feed["durations"].sum())
    noise = np.random.default_rng(3).standard_normal((1, enc["m_p"].shape[1], frames))
    feed["noise"] = noise.astype(np.float32)
    want = model.torch_runner().run("decoder", feed)["waveform"]
    got = OrtRunner({"decoder": files["decoder"]}).run("decoder", feed)["waveform"]
    snr = tensor_snr_db(want, got)
    assert snr is not None and snr > 100, snr
