"""ONNX export of the tiny VITS model at fp32/fp16/int8/int4, run in ONNX Runtime against torch.

The graphs are traced once for the module and every precision is exported from that trace. Figures
measured on the seed-0 tiny model (2-core CPU, onnxruntime 1.32):

    fp32 split graphs vs torch           ~117 dB      tts graph (noise off) vs torch  ~117 dB
    ORT vs torch with the same dequantized weights, whole synthesis, reference durations forced:
      fp16 ~116 dB;  int8 ~67 dB, int4 ~67 dB with ORT's default session options, ~117 dB with
      `session.qdq_matmulnbits_accuracy_level` = 1.
    Why: at ORT_ENABLE_EXTENDED and above, ONNX Runtime fuses DequantizeLinear(int8 or int4) + MatMul
    (the text encoder's 16 Linear weights) into MatMulNBits, whose default accuracy level 4 quantizes
    the *activations* to int8 on the fly. The decoder (Conv only) is not affected (~120 dB alone).
    (For scale: against the fp32 model's audio, fp16 ~56 dB, int8 ~25 dB, int4 ~8 dB; random weights
    are far more fragile than a trained voice.)
    decoder file sizes: fp32 1.05 MB > fp16 0.57 MB > int8 0.33 MB > int4 0.25 MB.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

import voxport
from voxport.export.onnx.exporter import export_onnx, trace_all
from voxport.families import load_model
from voxport.families.vits import VitsSettings
from voxport.quantize import QuantizedTensor, quantize
from voxport.runtime.ort import OrtRunner
from voxport.validate.metrics import tensor_snr_db, waveform_snr_db

PRECISIONS = ("fp32", "fp16", "int8", "int4")
GRAPHS = ("encoder", "decoder", "flow", "vocoder", "tts")
SENTENCE = "hello world, this is a test."
NOISE_OFF = VitsSettings(noise_scale=0.0, noise_scale_duration=0.0)
#: a Linear weight (traced as Transpose → MatMul), a Conv1d weight with a partial last int4 block
#: (48 * 3 = 144 columns), a ConvTranspose1d weight
LINEAR = "text_encoder.encoder.layers.0.attention.q_proj.weight"
CONV = "text_encoder.encoder.layers.0.feed_forward.conv_2.weight"
CONV_T = "decoder.upsampler.0.weight"


def _weights(model, precision: str) -> dict[str, np.ndarray | QuantizedTensor]:
    """What the quantize stage hands the exporter: floats everywhere, or int codes for kernels."""
    quantizable = model.quantizable()
    out = {}
    for name, tensor in model.state_dict().items():
        array = tensor.numpy()
        if precision in ("int8", "int4"):
            out[name] = quantize(array, precision) if name in quantizable else array
        else:
            out[name] = quantize(array, precision)
    return out


def _dequantized(weights) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(v.dequantize() if isinstance(v, QuantizedTensor) else v.astype(np.float32))
        for k, v in weights.items()
    }


def _session(path: Path, **config: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _runner(files: dict[str, Path], **config: str) -> OrtRunner:
    runner = OrtRunner(files)
    if config:
        runner.sessions = {graph: _session(path, **config) for graph, path in files.items()}
    return runner


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def _unpack_int4(init: TensorProto) -> np.ndarray:
    """Signed int4 codes from raw_data: element 2k in the low nibble of byte k, 2k+1 in the high one."""
    packed = np.frombuffer(init.raw_data, dtype=np.uint8)
    nibbles = np.empty(packed.size * 2, dtype=np.int16)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    count = int(np.prod(init.dims))
    codes = nibbles[:count]
    return np.where(codes >= 8, codes - 16, codes).astype(np.int8).reshape(tuple(init.dims))


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traced(tiny_vits):
    return trace_all(tiny_vits)


@pytest.fixture(scope="module")
def exported(tiny_vits, traced, tmp_path_factory):
    """precision → (weights handed to the exporter, {graph: path})."""
    out_dir = tmp_path_factory.mktemp("onnx")
    result = {}
    for precision in PRECISIONS:
        weights = _weights(tiny_vits, precision)
        files = export_onnx(
            tiny_vits,
            weights,
            out_dir,
            stem="tiny",
            precision=precision,
            metadata={"recipe": "tests"},
            traced=traced,
        )
        assert sorted(f.graph for f in files) == sorted(GRAPHS)
        assert [f.graph for f in files if f.primary] == ["tts"]
        result[precision] = (weights, {f.graph: f.path for f in files})
    return result


@pytest.fixture(scope="module")
def protos(exported):
    return {(p, g): onnx.load(str(path)) for p, (_, files) in exported.items() for g, path in files.items()}


@pytest.fixture(scope="module")
def ids(tiny_vits):
    return tiny_vits.text_to_ids(SENTENCE)


@pytest.fixture(scope="module")
def reference(tiny_vits, ids):
    return tiny_vits.synthesize(tiny_vits.torch_runner(), ids, VitsSettings())


def _recorder(called: set[str], weight: str):
    def hook(*_: object) -> None:
        called.add(weight)

    return hook


@pytest.fixture(scope="module")
def used_kernels(tiny_vits):
    """graph → quantizable weights its torch module actually calls (found with forward hooks)."""
    quantizable = tiny_vits.quantizable()
    result = {}
    for spec in tiny_vits.graphs():
        called: set[str] = set()
        hooks = [
            module.register_forward_hook(_recorder(called, f"{name}.weight"))
            for name, module in tiny_vits.model.named_modules()
            if f"{name}.weight" in quantizable
        ]
        try:
            with torch.no_grad():
                spec.module(*spec.example_inputs)
        finally:
            for hook in hooks:
                hook.remove()
        result[spec.name] = called
    return result


# --- fp32 ---------------------------------------------------------------------------------------------


def test_tracing_leaves_the_model_in_eval_mode(tiny_vits, tiny_vits_dir, traced, ids):
    """Regression: the exporter used to leave the shared VitsModel in training mode (dropout on)."""
    assert not [name for name, m in tiny_vits.model.named_modules() if m.training]
    fresh = load_model(tiny_vits_dir)
    want = fresh.synthesize(fresh.torch_runner(), ids, VitsSettings()).audio
    got = tiny_vits.synthesize(tiny_vits.torch_runner(), ids, VitsSettings()).audio
    np.testing.assert_array_equal(got, want)


def test_file_names_and_ort_loads_every_graph(exported):
    for precision, (_, files) in exported.items():
        assert files["tts"].name == f"tiny.{precision}.onnx"
        assert files["encoder"].name == f"tiny.{precision}.encoder.onnx"
        runner = OrtRunner(files)
        assert set(runner.sessions) == set(GRAPHS)
        assert [i.name for i in runner.sessions["tts"].get_inputs()] == ["input", "input_lengths", "scales"]


def test_fp32_split_graphs_match_torch(tiny_vits, exported, ids, reference):
    runner = OrtRunner(exported["fp32"][1])
    out = tiny_vits.synthesize(runner, ids, VitsSettings())
    np.testing.assert_array_equal(out.durations, reference.durations)
    for name in ("m_p", "logs_p"):
        assert (
            tensor_snr_db(reference.graph_outputs["encoder"][name], out.graph_outputs["encoder"][name]) > 100
        )
    snr = waveform_snr_db(reference.audio, out.audio)
    assert snr is not None and snr > 90, snr


def test_fp32_primary_graph_matches_torch_with_noise_off(tiny_vits, exported, ids):
    expected = tiny_vits.synthesize_primary(tiny_vits.torch_runner(), ids, NOISE_OFF)
    # the one-graph form computes what the split graphs compute
    split = tiny_vits.synthesize(tiny_vits.torch_runner(), ids, NOISE_OFF)
    np.testing.assert_allclose(expected.audio, split.audio, rtol=0, atol=1e-5)

    out = tiny_vits.synthesize_primary(OrtRunner(exported["fp32"][1]), ids, NOISE_OFF)
    assert out.graph_outputs["tts"]["output"].shape == (1, 1, 1, len(expected.audio))
    snr = waveform_snr_db(expected.audio, out.audio)
    assert snr is not None and snr > 90, snr


def test_tts_graph_with_noise_off_is_deterministic(exported, ids):
    path = exported["fp32"][1]["tts"]
    feed = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
    }
    first = _session(path).run(None, feed)[0]
    session = _session(path)
    second = session.run(None, feed)[0]
    third = session.run(None, feed)[0]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, third)


def test_graphs_have_no_data_dependent_scatter(protos):
    for graph in GRAPHS:
        ops = Counter(n.op_type for n in protos["fp32", graph].graph.node)
        assert ops["NonZero"] == 0 and ops["ScatterND"] == 0, (graph, ops)
    # only the user-facing graph samples its own noise; the parity graphs take it as input
    assert not [
        n
        for g in ("encoder", "decoder", "flow", "vocoder")
        for n in protos["fp32", g].graph.node
        if n.op_type.startswith("Random")
    ]


# --- metadata ------------------------------------------------------------------------------------------


def test_metadata_and_opset(protos):
    for (precision, graph), proto in protos.items():
        props = {p.key: p.value for p in proto.metadata_props}
        assert props["family"] == "vits"
        assert props["graph"] == graph
        assert props["precision"] == precision
        assert props["sample_rate"] == "16000"
        assert props["voxport_version"] == voxport.__version__
        assert props["recipe"] == "tests"
        if graph == "tts":
            assert props["model_type"] == "vits"
        opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        assert opset >= (21 if precision in ("int8", "int4") else 18)
        assert proto.producer_name == "voxport"


# --- fp16 ----------------------------------------------------------------------------------------------


def test_fp16_weights_are_float16_with_cast(tiny_vits, protos, exported):
    state = tiny_vits.state_dict()
    for graph in GRAPHS:
        proto = protos["fp16", graph]
        consumers = _consumers(proto)
        inits = {i.name: i for i in proto.graph.initializer}
        fp16 = [i for i in inits.values() if i.data_type == TensorProto.FLOAT16]
        assert fp16
        assert not [
            n for n, i in inits.items() if n.startswith("model.") and i.data_type == TensorProto.FLOAT
        ]
        for init in fp16:
            name = init.name.removesuffix("__fp16")
            assert name.startswith("model.") and name[len("model.") :] in state
            (cast,) = consumers[init.name]
            assert cast.op_type == "Cast" and _attr(cast, "to") == TensorProto.FLOAT
            assert list(cast.output) == [name]
            np.testing.assert_array_equal(
                numpy_helper.to_array(init), state[name[len("model.") :]].numpy().astype(np.float16)
            )
        assert exported["fp16"][1][graph].stat().st_size < exported["fp32"][1][graph].stat().st_size


# --- int8 ----------------------------------------------------------------------------------------------


def _dq_nodes(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """weight name → its DequantizeLinear node."""
    return {
        n.input[0].removeprefix("model.").removesuffix("__q"): n
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
    }


def test_int8_every_used_kernel_is_dequantized_per_channel(tiny_vits, traced, protos, exported, used_kernels):
    quantizable = tiny_vits.quantizable()
    weights = exported["int8"][0]
    for graph in GRAPHS:
        traced_names = {i.name.removeprefix("model.") for i in traced[graph][0].graph.initializer}
        used = quantizable & traced_names
        assert used == used_kernels[graph], graph  # no kernel was renamed or folded away by the trace
        proto = protos["int8", graph]
        inits = {i.name: i for i in proto.graph.initializer}
        consumers = _consumers(proto)
        dqs = _dq_nodes(proto)
        assert set(dqs) == used, graph
        for name, node in dqs.items():
            q = weights[name]
            codes, scale = inits[node.input[0]], inits[node.input[1]]
            assert codes.data_type == TensorProto.INT8 and scale.data_type == TensorProto.FLOAT
            assert f"model.{name}" not in inits
            assert len(node.input) == 2  # symmetric: no zero point
            to_matmul = all(c.op_type == "MatMul" for c in consumers[node.output[0]])
            stored = numpy_helper.to_array(codes)
            if to_matmul:  # Linear: stored as W^T, one scale per output feature = per column
                assert _attr(node, "axis") == 1
                np.testing.assert_array_equal(stored, q.codes.T)
            else:  # Conv (rows = out channels) / ConvTranspose (rows = in channels): axis 0
                assert _attr(node, "axis") == 0
                np.testing.assert_array_equal(stored, q.codes.reshape(q.shape))
            np.testing.assert_array_equal(numpy_helper.to_array(scale), q.scales.reshape(-1))
            assert numpy_helper.to_array(scale).shape == (q.shape[0],)
        assert sum(1 for n in dqs if n.endswith("_proj.weight") and "attention" in n) == (
            16 if graph in ("encoder", "tts") else 0  # the text encoder's attention
        )


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_ort_equals_torch_with_dequantized_weights(tiny_vits, exported, ids, reference, precision):
    weights, files = exported[precision]
    dequantized = tiny_vits.with_weights(_dequantized(weights))
    settings = VitsSettings()
    forced = reference.durations[None].astype(np.float32)
    expected = dequantized.synthesize(dequantized.torch_runner(), ids, settings, forced_durations=forced)

    # decoder alone on identical inputs: Conv/ConvTranspose with DequantizeLinear weights
    enc = expected.graph_outputs["encoder"]
    feed = {k: enc[k] for k in ("m_p", "logs_p")}
    feed["durations"] = forced
    feed["noise"] = np.random.default_rng(3).standard_normal((1, 32, int(forced.sum()))).astype(np.float32)
    want = dequantized.torch_runner().run("decoder", feed)["waveform"]
    got = OrtRunner({"decoder": files["decoder"]}).run("decoder", feed)["waveform"]
    assert tensor_snr_db(want, got) > 100

    # whole synthesis, ORT's default session options (as a deployed runtime would run it)
    default = tiny_vits.synthesize(_runner(files), ids, settings, forced_durations=forced)
    snr_default = waveform_snr_db(expected.audio, default.audio)
    # the same with MatMulNBits computing in fp32 (accuracy level 1) instead of int8 activations (4)
    exact = tiny_vits.synthesize(
        _runner(files, **{"session.qdq_matmulnbits_accuracy_level": "1"}),
        ids,
        settings,
        forced_durations=forced,
    )
    snr_exact = waveform_snr_db(expected.audio, exact.audio)
    # measured 115.7-116.7 dB (torch vs ORT, fp32 kernels of each); 95 = 20 dB for another CPU's
    # kernels, still far above a wrong weight (< 60 dB) and above quantization's own figure (to_fp32)
    assert snr_exact is not None and snr_exact > 95, snr_exact
    # fp16 has no DequantizeLinear to fuse (measured 116.7, same margin as above); int8/int4 lose ~50 dB
    # to MatMulNBits' int8 activations (measured 65.8-66.3: quantization error, not kernel rounding)
    assert snr_default is not None and snr_default > (95 if precision == "fp16" else 55), snr_default

    # quantization itself moves the audio away from fp32, int4 more than int8
    to_fp32 = waveform_snr_db(reference.audio, exact.audio)
    assert to_fp32 is not None and to_fp32 < snr_exact


def test_ort_fuses_dequantized_matmul_into_matmulnbits(exported, tmp_path):
    """The cause of the ~67 dB above: Linear weights become MatMulNBits inside ONNX Runtime."""
    for precision in ("int8", "int4"):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / f"{precision}.opt.onnx")
        ort.InferenceSession(
            str(exported[precision][1]["encoder"]), options, providers=["CPUExecutionProvider"]
        )
        ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
        assert ops["MatMulNBits"] == 16, (precision, ops)  # 4 layers x q/k/v/out projections


# --- int4 ----------------------------------------------------------------------------------------------


def _read_int4_weight(proto: onnx.ModelProto, name: str) -> tuple[np.ndarray, str]:
    """Dequantize one weight the way the graph does; returns it in torch layout and how it is used."""
    inits = {i.name: i for i in proto.graph.initializer}
    consumers = _consumers(proto)
    node = _dq_nodes(proto)[name]
    codes_init = inits[node.input[0]]
    # block scales are stored as float16 and Cast to float32 (exact) in front of the DequantizeLinear
    (cast,) = [n for n in proto.graph.node if n.output and n.output[0] == node.input[1]]
    assert cast.op_type == "Cast" and _attr(cast, "to") == TensorProto.FLOAT
    scale_init = inits[cast.input[0]]
    assert scale_init.data_type == TensorProto.FLOAT16
    assert codes_init.data_type == TensorProto.INT4
    assert _attr(node, "block_size") == 32
    codes = _unpack_int4(codes_init)
    scales = numpy_helper.to_array(scale_init).astype(np.float32)
    axis = _attr(node, "axis")
    assert scales.shape[axis] == -(-codes.shape[axis] // 32)
    full = np.repeat(scales, 32, axis=axis)
    full = full[:, : codes.shape[1]] if axis == 1 else full[: codes.shape[0]]
    value = codes.astype(np.float32) * full
    (user,) = consumers[node.output[0]][:1]
    if user.op_type == "Reshape":
        shape = numpy_helper.to_array(inits[user.input[1]])
        return value.reshape(shape), "reshape"
    users = {c.op_type for c in consumers[node.output[0]]}
    assert users == {"MatMul"}, users
    assert axis == 0  # pre-transposed: blocks run along the reduction axis
    return value.T, "matmul"


def test_int4_blocked_dequantize_reads_back_bit_exact(tiny_vits, protos, exported):
    weights = exported["int4"][0]
    checked = Counter()
    for graph in ("encoder", "decoder"):
        proto = protos["int4", graph]
        for name in _dq_nodes(proto):
            q = weights[name]
            value, how = _read_int4_weight(proto, name)
            assert value.shape == q.shape
            np.testing.assert_array_equal(_bits(value), _bits(q.dequantize()), err_msg=name)
            checked[how] += 1
            if name in (LINEAR, CONV, CONV_T):
                checked[name] += 1
    assert checked[LINEAR] == checked[CONV] == checked[CONV_T] == 1
    assert checked["matmul"] == 16
    assert checked["reshape"] > 50


def test_int4_linear_weights_feed_matmul_without_transpose(tiny_vits, traced, protos):
    proto = protos["int4", "encoder"]
    consumers = _consumers(proto)
    inits = {i.name: i for i in proto.graph.initializer}
    linear = [n for n, m in tiny_vits.model.named_modules() if isinstance(m, torch.nn.Linear)]
    dqs = _dq_nodes(proto)
    for module in linear:
        node = dqs[f"{module}.weight"]
        assert {c.op_type for c in consumers[node.output[0]]} == {"MatMul"}
        out_features, in_features = tiny_vits.state_dict()[f"{module}.weight"].shape
        assert tuple(inits[node.input[0]].dims) == (in_features, out_features)
    dq_outputs = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    assert not [n for n in proto.graph.node if n.op_type == "Transpose" and set(n.input) & dq_outputs]
    before = Counter(n.op_type for n in traced["encoder"][0].graph.node)["Transpose"]
    after = Counter(n.op_type for n in proto.graph.node)["Transpose"]
    assert before - after == len(linear) == 16


# --- sizes ----------------------------------------------------------------------------------------------


def test_file_sizes_shrink_with_precision(exported):
    for graph in GRAPHS:
        sizes = [exported[p][1][graph].stat().st_size for p in PRECISIONS]
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4, (graph, sizes)
    decoder = [exported[p][1]["decoder"].stat().st_size for p in PRECISIONS]
    assert decoder[1] < 0.6 * decoder[0]  # fp16 halves the weights
    assert decoder[3] < 0.3 * decoder[0]
