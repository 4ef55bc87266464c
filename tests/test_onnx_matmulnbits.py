"""`export.onnx.matmul_accuracy_level`: quantized Linears written as ONNX Runtime's MatMulNBits.

On the tiny Pocket TTS model (random weights, end of speech disabled), teacher-forced: the reference
fp32 latents are fed back each step, so every frame compares the same inputs. Measured (onnxruntime
1.32, this machine) against torch with the same dequantized weights, worst frame's latent SNR:
level 0: 123.9 dB (int8), 118.7 dB (int4) (fp32 kernels on both sides; the codes are exact); level 4
and the portable DequantizeLinear → MatMul that ONNX Runtime fuses at level 4 by default: 30.7 / 30.2 dB
(int8 activations; identical to 4 decimals, so the emitted int8 blocks match ORT's own fusion). 90 dB
leaves 20+ dB for another CPU's fp32 kernels and still fails a wrong code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from voxport.errors import BadInput
from voxport.export.onnx.describe import describe_onnx
from voxport.export.onnx.exporter import export_onnx, trace_all
from voxport.families.pocket_tts import PocketTTSAdapter
from voxport.families.pocket_tts.loop import LoopSettings, generate
from voxport.families.pocket_tts.synthetic import random_model
from voxport.quantize.stage import QuantizedModel, quantize_model
from voxport.quantize.tensor import QuantizedTensor
from voxport.recipe import load_recipe
from voxport.runtime.ort import OrtRunner
from voxport.validate.metrics import tensor_snr_db

FRAMES = 12
IDS = [5, 17, 230, 4, 99, 1200, 7, 31]


@pytest.fixture(scope="module")
def model() -> PocketTTSAdapter:
    model = random_model(seed=0)
    state = model.state_dict()
    state["flow_lm.out_eos.bias"] = torch.full_like(state["flow_lm.out_eos.bias"], -100.0)
    return model.with_weights(state)


@pytest.fixture(scope="module")
def traced(model: PocketTTSAdapter) -> dict:
    return trace_all(model)


@pytest.fixture(scope="module")
def quantized(model: PocketTTSAdapter) -> dict[str, QuantizedModel]:
    return {p: quantize_model(model, p, block_size=32) for p in ("int8", "int4")}


def _export(model, traced, qm: QuantizedModel, out: Path, level) -> dict[str, Path]:  # noqa: ANN001
    files = export_onnx(
        model, qm.weights, out, stem="t", precision=qm.precision, metadata={}, traced=traced,
        matmul_accuracy_level=level,
    )  # fmt: skip
    return {f.graph: f.path for f in files}


def _latents(model: PocketTTSAdapter, runner, forced: np.ndarray | None = None) -> np.ndarray:  # noqa: ANN001
    settings = LoopSettings(seed=0, temperature=0.0, max_frames=FRAMES)
    return generate(runner, model.loop_spec, IDS, settings, forced_latents=forced).latents


def _worst(a: np.ndarray, b: np.ndarray) -> float:
    return min(tensor_snr_db(x, y) for x, y in zip(a, b, strict=True))


def _decode(packed: np.ndarray, scales: np.ndarray, bits: int, k: int) -> np.ndarray:
    """MatMulNBits' B and scales → float weights (N, K), with the default zero point 2**(bits-1)."""
    n, blocks, _ = packed.shape
    flat = packed.reshape(n, -1)
    if bits == 4:
        flat = np.stack([flat & 0x0F, flat >> 4], axis=-1).reshape(n, -1)
    codes = flat.astype(np.float32) - (1 << (bits - 1))
    return (codes.reshape(n, blocks, -1) * scales[:, :, None]).reshape(n, -1)[:, :k]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_emitted_matmulnbits_hold_the_quantized_tensors_codes(model, traced, quantized, precision, tmp_path):
    qm = quantized[precision]
    files = _export(model, traced, qm, tmp_path, 4)
    seen = set()
    for graph, path in files.items():
        proto = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        for node in proto.graph.node:
            if node.op_type != "MatMulNBits":
                continue
            attrs = {a.name: a.i for a in node.attribute}
            assert node.domain == "com.microsoft" and attrs["accuracy_level"] == 4
            weight = node.input[1].removeprefix("model.").removesuffix("__nbits")
            q = qm.weights[weight]
            assert isinstance(q, QuantizedTensor) and attrs["bits"] == q.bits
            got = _decode(inits[node.input[1]], inits[node.input[2]], attrs["bits"], attrs["K"])
            assert np.array_equal(got, q.dequantize()), weight  # bit-identical, not close
            seen.add(weight)
        # no DequantizeLinear → MatMul left: every Linear pattern was rewritten
        dq = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
        assert not [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in dq], graph
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["matmul_accuracy_level"] == "4"
    linears = {k for k, v in qm.weights.items() if isinstance(v, QuantizedTensor)}
    # every quantized Linear of the backbone, flow head and codec transformer (a shared or
    # non-MatMul use would stay DequantizeLinear; the tiny model has none)
    assert seen == linears and len(seen) > 20
    info = describe_onnx(files["backbone"])
    assert info["matmulnbits_nodes"] > 0 and info["dequantize_nodes"] == 0
    assert f"INT{qm.weights[next(iter(seen))].bits}" in info["parameters_by_precision"]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_level_0_computes_what_torch_does_with_the_same_weights(
    model, traced, quantized, precision, tmp_path
):
    qm = quantized[precision]
    reference = _latents(model, model.torch_runner())
    dequantized = model.with_weights(qm.dequantized())
    same_weights = _latents(dequantized, dequantized.torch_runner(), reference)
    snr = {}
    for level in (0, 4, None):
        runner = OrtRunner(_export(model, traced, qm, tmp_path / str(level), level))
        snr[level] = _worst(same_weights, _latents(model, runner, reference))
    assert snr[0] > 90, snr
    # int8 activations: measurably lower, and what ORT's own fusion of DequantizeLinear → MatMul gives
    assert snr[4] < snr[0] - 20 and snr[None] < snr[0] - 20, snr


def test_a_graph_name_the_model_lacks_is_bad_input(model, traced, quantized, tmp_path):
    with pytest.raises(BadInput, match="no graph named vocoder .*graphs: backbone, flow_head, codec"):
        _export(model, traced, quantized["int8"], tmp_path, {"vocoder": 1})
    files = _export(model, traced, quantized["int8"], tmp_path, {"flow_head": 1})
    ops = {g: {n.op_type for n in onnx.load(str(p)).graph.node} for g, p in files.items()}
    assert "MatMulNBits" in ops["flow_head"] and "MatMulNBits" not in ops["backbone"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "r.yaml:6: export.onnx.matmul_accuracy_level: must be an ONNX Runtime MatMulNBits accuracy "
              "level 0-4 (1 fp32, 4 int8 activations), a mapping graph → level, or null; got an integer (5)"),
        ("fast", "r.yaml:6: export.onnx.matmul_accuracy_level: must be an ONNX Runtime"),
        ("{backbone: 7}", "r.yaml:6: export.onnx.matmul_accuracy_level: backbone: must be an accuracy level "
                          "0-4, got an integer (7)"),
        ("true", "got a boolean (true)"),
    ],
)  # fmt: skip
def test_the_recipe_key_names_file_line_and_field(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: r\nmodel: {tmp_path}\nformats: [onnx]\nexport:\n  onnx:\n    matmul_accuracy_level: {value}\n"
    )
    with pytest.raises(BadInput) as info:
        load_recipe(path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"), [("null", None), ("1", 1), ("{flow_head: 1}", {"flow_head": 1})]
)
def test_the_recipe_key_accepts_null_a_level_or_a_mapping(tmp_path: Path, value: str, expected) -> None:  # noqa: ANN001
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: r\nmodel: {tmp_path}\nformats: [onnx]\nexport:\n  onnx:\n    matmul_accuracy_level: {value}\n"
    )
    assert load_recipe(path).export_options("onnx").matmul_accuracy_level == expected


def test_a_build_writes_the_level_into_the_artifact_its_parity_runs(
    tiny_vits_dir: Path, tmp_path: Path
) -> None:
    """Through the pipeline: the recipe key reaches the file, the validate stage runs that file with
    default session options (as a user would), and the cache key changes only when a level is set."""
    from voxport import pipeline
    from voxport.export.registry import get_format
    from voxport.recipe import Recipe

    recipe = Recipe.from_mapping(
        {
            "name": "tiny",
            "model": str(tiny_vits_dir),
            "formats": ["onnx"],
            "precisions": ["int8"],
            "export": {"onnx": {"matmul_accuracy_level": 1}},
            "validate": {"texts": ["hello world."], "thresholds": {"forced_snr_db": 3, "logmel_dtw_db": 15}},
        },
        tiny_vits_dir,
    )
    manifest = pipeline.build(recipe, tmp_path)
    (entry,) = manifest.artifacts
    proto = onnx.load(str(tmp_path / entry.path))
    levels = {
        a.i
        for n in proto.graph.node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == "accuracy_level"
    }
    assert levels == {1}
    assert entry.parity.metrics["forced_snr_db"] > 15  # ran in ONNX Runtime
    onnx_format = get_format("onnx")
    assert "matmul_accuracy_level" not in onnx_format.cache_options(onnx_format.Options(), "int8")
    keyed = onnx_format.cache_options(onnx_format.Options(matmul_accuracy_level=1), "int8")
    assert keyed["matmul_accuracy_level"] == 1
