"""Core ML weights from voxport's own QuantizedTensors: bit-identical to ONNX and GGUF.

The programs here are built directly with coremltools (torch.jit.trace → ``milinternal``) from the
tiny VITS's HiFi-GAN decoder (Conv1d with kernels 3/7, ConvTranspose1d, partial int4 blocks) and from
a small module covering Linear, a transposed matmul weight and Embedding. Every saved package is read
back with coremltools' milproto loader, and each constexpr op is decoded here, in numpy, independently
of `voxport.export.coreml.weights`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import onnx
import pytest
import torch
from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
from onnx import numpy_helper

from voxport.errors import BadInput
from voxport.export.coreml.palettize import palettize_model
from voxport.export.coreml.weights import (
    TARGET_MESSAGE,
    CompressionResult,
    compress_program,
    mlprogram_compute_precision,
    unplaced_across,
)
from voxport.families.base import FamilyModel
from voxport.quantize.stage import QuantizedModel, quantize_model
from voxport.quantize.tensor import QuantizedTensor

torch.set_num_threads(1)

WEIGHT_BIN = Path("Data/com.apple.CoreML/weights/weight.bin")


# ------------------------------------------------------------------------------------------ helpers


def _program(module: torch.nn.Module, example: torch.Tensor, *, target: Any, fp16: bool = False) -> Any:
    traced = torch.jit.trace(module.eval(), example)
    dtype = np.int32 if example.dtype in (torch.int32, torch.int64) else np.float32
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=tuple(example.shape), dtype=dtype)],
        convert_to="milinternal",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
    )


def _save(program: Any, path: Path, *, target: Any, fp16: bool = False) -> Path:
    model = ct.convert(
        program,
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=mlprogram_compute_precision(fp16),
    )
    model.save(str(path))
    return path


def _load(path: Path) -> Any:
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    return milproto_load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir)


def _expand(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Core ML's blockwise broadcast: block size along each axis is data.shape / scale.shape."""
    for axis, (full, part) in enumerate(zip(shape, small.shape, strict=True)):
        small = np.repeat(small, full // part, axis=axis)
    return small


def _decode_op(op: Any) -> np.ndarray:
    """The float value a constexpr op and the layout ops after it produce, computed here in numpy."""
    if op.op_type == "constexpr_blockwise_shift_scale":
        data = op.data.val.astype(np.float32)
        scale = op.scale.val
        offset = 0 if op.offset is None else _expand(op.offset.val.astype(np.float32), data.shape)
        value = ((data - offset) * _expand(scale.astype(np.float32), data.shape)).astype(scale.dtype)
    elif op.op_type == "constexpr_affine_dequantize":
        data = op.quantized_data.val.astype(np.float32)
        axis = int(op.axis.val)
        bshape = [1] * data.ndim
        bshape[axis] = -1
        scale = op.scale.val
        zp = np.asarray(op.zero_point.val, np.float32)
        zp = zp.reshape(bshape) if zp.ndim else zp
        value = ((data - zp) * scale.astype(np.float32).reshape(bshape)).astype(scale.dtype)
    elif op.op_type == "const":
        value = op.outputs[0].val
    else:
        raise AssertionError(f"unexpected weight op {op.op_type}")
    var = op.outputs[0]
    while len(var.child_ops) == 1 and var.child_ops[0].op_type in (
        "slice_by_size",
        "reshape",
        "transpose",
        "cast",
    ):
        nxt = var.child_ops[0]
        if nxt.op_type == "slice_by_size":
            begin, size = nxt.begin.val, nxt.size.val
            value = value[tuple(slice(b, None if s < 0 else b + s) for b, s in zip(begin, size, strict=True))]
        elif nxt.op_type == "reshape":
            value = value.reshape(tuple(nxt.shape.val))
        elif nxt.op_type == "transpose":
            value = np.transpose(value, tuple(nxt.perm.val))
        else:
            value = value.astype({"fp16": np.float16, "fp32": np.float32}[nxt.dtype.val])
        var = nxt.outputs[0]
    return value


def _decoded(path: Path, result: CompressionResult) -> dict[str, np.ndarray]:
    """{weight name: the value the saved package computes for it}, for every placed or dense weight."""
    ops = {op.name: op for op in _load(path).functions["main"].operations}
    out = {}
    for name, placed in (result.placed | result.dense).items():
        values = [_decode_op(ops[op_name]) for op_name in placed.new_ops]
        for other in values[1:]:
            assert np.array_equal(values[0], other)
        out[name] = values[0]
    return out


def _op_types(path: Path) -> list[str]:
    return [op.op_type for op in _load(path).functions["main"].operations]


def _onnx_dequantized(path: Path, prefix: str = "model.") -> dict[str, np.ndarray]:
    """Each DequantizeLinear'd weight of a voxport ONNX file, dequantized here from its initializers."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    by_output = {n.output[0]: n for n in model.graph.node}
    for node in model.graph.node:  # blocked int8 scales: a float16 initializer cast to float32
        if node.op_type == "Cast" and node.name.endswith("__scale_cast"):
            inits[node.output[0]] = inits[node.input[0]].astype(np.float32)
    out = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or not node.name.endswith("__dq"):
            continue
        attrs = {a.name: a.i for a in node.attribute}
        codes = inits[node.input[0]].astype(np.float32)
        scale = inits[node.input[1]].astype(np.float32)
        axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
        if block:
            scale = np.repeat(scale, block, axis=axis)[tuple(slice(0, d) for d in codes.shape)]
        else:
            bshape = [1] * codes.ndim
            bshape[axis] = -1
            scale = scale.reshape(bshape)
        value = codes * scale
        name = node.name[: -len("__dq")]
        reshape = next(
            (n for n in model.graph.node if n.op_type == "Reshape" and n.input[0] == node.output[0]), None
        )
        if reshape is not None:
            value = value.reshape(tuple(inits[reshape.input[1]]))
        elif node.output[0] != name and node.output[0] not in by_output.get(name, node).output:
            value = value.T  # stored pre-transposed for MatMul
        out[name[len(prefix) :]] = value
    return out


class _Stub:
    """Just what `quantize_model` reads of a FamilyModel, for a hand-built torch module."""

    def __init__(self, module: torch.nn.Module, quantizable: set[str]) -> None:
        self._state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self._quantizable = quantizable

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state

    def quantizable(self) -> set[str]:
        return self._quantizable


class _Probe(torch.nn.Module):
    """Embedding → Linear → matmul with a transposed weight → Conv1d(k=7) → ConvTranspose1d(k=16)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.emb = torch.nn.Embedding(40, 64)
        self.lin = torch.nn.Linear(64, 64)
        # used as ``h @ proj``: coremltools turns that matmul into a `linear` holding proj.T
        self.proj = torch.nn.Parameter(torch.randn(64, 96) * 0.1)
        self.conv = torch.nn.Conv1d(96, 64, 7, padding=3)
        self.up = torch.nn.ConvTranspose1d(64, 32, 16, stride=8, padding=4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.lin(self.emb(ids))
        h = torch.matmul(h, self.proj)
        h = self.conv(h.transpose(1, 2))
        return self.up(torch.nn.functional.leaky_relu(h, 0.1))


_PROBE_QUANTIZABLE = {"emb.weight", "lin.weight", "proj", "conv.weight", "up.weight"}


def _state(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _quantized_under(qm: QuantizedModel, prefix: str) -> dict[str, QuantizedTensor]:
    return {k: v for k, v in qm.weights.items() if isinstance(v, QuantizedTensor) and k.startswith(prefix)}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def decoder(tiny_vits: FamilyModel) -> tuple[torch.nn.Module, torch.Tensor]:
    module = tiny_vits.model.decoder.eval()  # type: ignore[attr-defined]
    return module, torch.randn(1, tiny_vits.model.config.flow_size, 12)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def packages(
    tiny_vits: FamilyModel,
    decoder: tuple[torch.nn.Module, torch.Tensor],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The decoder saved at fp32, int8, int8 in blocks of 32 and int4 (placed codes) and 4-bit palettized."""
    module, example = decoder
    out = tmp_path_factory.mktemp("coreml_weights")
    state = _state(tiny_vits)
    iOS18 = ct.target.iOS18
    built: dict[str, Any] = {
        "fp32": _save(_program(module, example, target=iOS18), out / "fp32.mlpackage", target=iOS18)
    }
    for precision in ("int8", "int4", "int8b32"):
        if precision == "int8b32":  # quantize.int8_block_size: 32, the codes of GGUF Q8_0
            qm = quantize_model(tiny_vits, "int8", int8_block_size=32)
        else:
            qm = quantize_model(tiny_vits, precision)
        program = _program(module, example, target=iOS18)
        result = compress_program(program, qm.weights, state)
        path = _save(program, out / f"{precision}.mlpackage", target=iOS18)
        built[precision] = (qm, result, path)
    # int4 with layout ops even where a const weight is specified (dilated convs): the smallest package
    qm4 = built["int4"][0]
    program = _program(module, example, target=iOS18)
    computed = compress_program(program, qm4.weights, state, const_weights="computed")
    built["int4c"] = (computed, _save(program, out / "int4c.mlpackage", target=iOS18))
    plain = ct.models.MLModel(str(built["fp32"]), skip_model_load=True)
    pal = palettize_model(plain, qm4.weights, state, nbits=4)
    pal.model.save(str(out / "pal4.mlpackage"))
    built["pal4"] = (pal, out / "pal4.mlpackage")
    return built


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("precision", ["int8", "int4", "int8b32"])
def test_every_decoder_weight_placed_and_bit_identical(
    packages: dict[str, Any], precision: str, tiny_vits: FamilyModel, tmp_path: Path
) -> None:
    from voxport.export.onnx.exporter import export_onnx, trace_all

    qm, result, path = packages[precision]
    wanted = _quantized_under(qm, "decoder.")
    assert wanted and set(result.placed) | set(result.dense) == set(wanted)  # none silently left fp32
    # int4 blocks of 32 cross the kernel axis of k=3/7 convs; HiFi-GAN's dilated ones need a const
    # weight, so those hold the exact dequantized values instead (and are reported)
    dilated = {k for k in wanted if re.fullmatch(r"decoder\.resblocks\.\d\.convs1\.[12]\.weight", k)}
    assert set(result.dense) == {k for k in dilated if wanted[k].block_size < wanted[k].cols}
    # per-channel int8 is always a plain constexpr; blocks of 32 (int4, int8b32) cross dilated kernels
    assert bool(result.dense) == (precision != "int8")
    skipped = {k for k, v in qm.weights.items() if isinstance(v, QuantizedTensor)} - set(result.placed)
    assert {row["name"] for row in result.unplaced} == skipped
    for row in result.unplaced:
        if row["name"] in result.dense:
            assert row["stored"] == "fp32" and "dilated conv" in row["reason"]
        else:
            assert not row["name"].startswith("decoder.") and row["reason"].startswith("not found")

    kinds = _op_types(path)
    assert kinds.count("constexpr_blockwise_shift_scale") == len(result.placed)
    decoded = _decoded(path, result)
    for name, q in wanted.items():
        assert decoded[name].dtype == np.float32
        assert np.array_equal(decoded[name], q.dequantize()), name

    if "onnx" not in packages:  # trace once for both precisions
        packages["onnx"] = trace_all(tiny_vits)
    files = export_onnx(
        tiny_vits,
        qm.weights,
        tmp_path,
        stem="tiny",
        precision=qm.precision,
        metadata={},
        traced=packages["onnx"],
    )
    onnx_weights = _onnx_dequantized(next(f.path for f in files if f.primary))
    for name in wanted:
        assert np.array_equal(onnx_weights[name], decoded[name]), name


def test_int4_matches_gguf_q4_0(packages: dict[str, Any], tiny_vits: FamilyModel, tmp_path: Path) -> None:
    from voxport.export.gguf.reader import read_gguf
    from voxport.export.gguf.writer import plan_tensors, write_gguf

    qm, result, path = packages["int4"]
    decoded = _decoded(path, result)
    write_gguf(tiny_vits, qm, tmp_path / "tiny.gguf", name="tiny", fallback_type="F32")
    _, tensors = read_gguf(tmp_path / "tiny.gguf", tiny_vits)
    plans, _ = plan_tensors(tiny_vits, qm, fallback_type="F32")
    q4_0 = {p.name for p in plans if p.ggml_type.name == "Q4_0" and p.source == "codes"}
    compared = q4_0 & set(decoded)
    assert "decoder.conv_pre.weight" in compared and len(compared) >= 10
    for name in decoded:  # Q4_0 blocks, or exact F32 fallbacks for rows that are not whole blocks
        assert np.array_equal(tensors[name], decoded[name]), name


def test_int8_blocks_match_gguf_q8_0_and_onnx(
    packages: dict[str, Any], tiny_vits: FamilyModel, tmp_path: Path
) -> None:
    """`int8_block_size: 32`: the same codes reach Core ML (blockwise constexpr), GGUF (Q8_0 packed
    from the codes, read back through gguf-py's dequantize) and ONNX (blocked DequantizeLinear)."""
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    from voxport.export.gguf.writer import plan_tensors, write_gguf
    from voxport.export.onnx.exporter import export_onnx, trace_all

    qm, result, path = packages["int8b32"]
    blocked = {k: v for k, v in qm.weights.items() if isinstance(v, QuantizedTensor) and v.block_size == 32}
    assert len(blocked) >= 20
    for q in blocked.values():  # fp16-exact scales: Q8_0's d loses nothing
        assert np.array_equal(q.scales.astype(np.float16).astype(np.float32), q.scales)
    decoded = _decoded(path, result)
    write_gguf(tiny_vits, qm, tmp_path / "tiny.gguf", name="tiny", fallback_type="F32")
    plans, _ = plan_tensors(tiny_vits, qm, fallback_type="F32")
    from_codes = {p.gguf_name: p.name for p in plans if p.ggml_type.name == "Q8_0" and p.source == "codes"}
    # every whole-block int8 weight is packed from its codes; none is re-quantized from fp32
    assert set(from_codes.values()) == {k for k, v in blocked.items() if v.cols % 32 == 0}
    assert not [p for p in plans if p.ggml_type.name == "Q8_0" and p.source != "codes"]
    reader = GGUFReader(tmp_path / "tiny.gguf")
    q8 = [t for t in reader.tensors if t.tensor_type == GGMLQuantizationType.Q8_0]
    assert {t.name for t in q8} == set(from_codes)
    traced = trace_all(tiny_vits)
    onnx_files = export_onnx(
        tiny_vits, qm.weights, tmp_path, stem="tiny", precision="int8", metadata={}, traced=traced
    )
    onnx_weights = _onnx_dequantized(next(f.path for f in onnx_files if f.primary))
    compared = 0
    for t in q8:
        name = from_codes[t.name]
        q = qm.weights[name]
        gguf_value = dequantize(t.data, GGMLQuantizationType.Q8_0).reshape(q.shape)
        assert np.array_equal(gguf_value, q.dequantize()), name
        assert np.array_equal(onnx_weights[name], gguf_value), name
        if name in decoded:
            assert np.array_equal(decoded[name], gguf_value), name
            compared += 1
    assert compared >= 10


def test_int8_blocks_package_runs_like_torch_on_the_dequantized_weights(
    packages: dict[str, Any], decoder: tuple[torch.nn.Module, torch.Tensor]
) -> None:
    """The saved int8-blocks decoder, run by the numpy MIL interpreter (Core ML's semantics on Linux),
    against torch running the same module with `qm.dequantized()` loaded."""
    import copy

    from voxport.runtime.coreml import CoremlRunner

    module, example = decoder
    qm, _, path = packages["int8b32"]
    reference = copy.deepcopy(module)
    prefix = "decoder."
    reference.load_state_dict(
        {k[len(prefix) :]: v for k, v in qm.dequantized().items() if k.startswith(prefix)}, strict=True
    )
    with torch.no_grad():
        want = reference(example).numpy()
    (got,) = CoremlRunner({"decoder": path}).run("decoder", {"x": example.numpy()}).values()
    err = float(np.sum((want.astype(np.float64) - got) ** 2))
    snr = 10 * np.log10(float(np.sum(want.astype(np.float64) ** 2)) / max(err, 1e-30))
    assert got.shape == want.shape and snr > 100, snr


def test_sizes_shrink(packages: dict[str, Any]) -> None:
    sizes = {
        "fp32": (packages["fp32"] / WEIGHT_BIN).stat().st_size,
        "int8": (packages["int8"][2] / WEIGHT_BIN).stat().st_size,
        "int4": (packages["int4"][2] / WEIGHT_BIN).stat().st_size,
        "int4_computed": (packages["int4c"][1] / WEIGHT_BIN).stat().st_size,
        "pal4": (packages["pal4"][1] / WEIGHT_BIN).stat().st_size,
    }
    print("weight.bin bytes:", sizes)
    # biases stay fp32 and the 64-byte alignment of each blob costs more on a model this small
    assert sizes["int8"] < 0.45 * sizes["fp32"]
    # default int4: the 12 dilated resblock convs hold dense fp32 (exact) values, the rest int4
    assert sizes["int4"] < 0.4 * sizes["fp32"]
    assert sizes["int4_computed"] < 0.75 * sizes["int8"]
    assert sizes["pal4"] < 0.45 * sizes["fp32"]
    result4, _ = packages["int4c"]
    assert not result4.dense and not packages["int4"][1].placed.keys() & packages["int4"][1].dense.keys()
    _, result8, _ = packages["int8"]
    assert 4 < result4.quantized_bits_per_weight < 5.5
    assert 8 < result8.quantized_bits_per_weight < 9


def test_palettize_makes_lut_ops_for_quantizable_weights_only(packages: dict[str, Any]) -> None:
    pal, path = packages["pal4"]
    qm, placed, _ = packages["int4"]
    assert set(pal.palettized) == set(_quantized_under(qm, "decoder."))
    kinds = _op_types(path)
    assert kinds.count("constexpr_lut_to_dense") == len(pal.palettized)
    assert "constexpr_blockwise_shift_scale" not in kinds
    assert 4 <= pal.bits_per_weight < 5
    # a different encoding: k-means tables, not our codes (documented as not bit-identical)
    program = _load(path)
    lut_ops = [op for op in program.functions["main"].operations if op.op_type == "constexpr_lut_to_dense"]
    assert all(op.lut.val.shape[-2] == 16 for op in lut_ops)


def test_linear_transposed_embedding_and_fp16(tmp_path: Path) -> None:
    """Linear, a weight the frontend folds to its transpose, Embedding; fp16 compute precision."""
    module = _Probe()
    example = torch.randint(0, 40, (1, 9), dtype=torch.int32)
    stub = _Stub(module, _PROBE_QUANTIZABLE)
    qm = quantize_model(stub, "int4", overrides={"lin.weight": "int8"})  # type: ignore[arg-type]
    wanted = {k: v for k, v in qm.weights.items() if isinstance(v, QuantizedTensor)}
    assert {v.bits for v in wanted.values()} == {4, 8}
    state = _state(module)
    for fp16 in (False, True):
        program = _program(module, example, target=ct.target.iOS18, fp16=fp16)
        result = compress_program(program, qm.weights, state)
        assert set(result.placed) == set(wanted) and not result.unplaced
        assert result.placed["proj"].layout == "transpose"
        assert result.placed["emb.weight"].layout == "identity"
        path = _save(program, tmp_path / f"probe{int(fp16)}.mlpackage", target=ct.target.iOS18, fp16=fp16)
        decoded = _decoded(path, result)
        for name, q in wanted.items():
            expected = q.dequantize().T if name == "proj" else q.dequantize()
            if fp16:
                expected = expected.astype(np.float16)
            assert decoded[name].dtype == expected.dtype
            assert np.array_equal(decoded[name], expected), name
        kept = result.kept
        assert "lin.bias" in kept and "conv.bias" in kept


def test_fp16_stored_float_weight_is_rounded_in_fp32_program(tmp_path: Path) -> None:
    module = _Probe()
    example = torch.randint(0, 40, (1, 9), dtype=torch.int32)
    qm = quantize_model(_Stub(module, _PROBE_QUANTIZABLE), "int4", overrides={"conv.weight": "fp16"})  # type: ignore[arg-type]
    program = _program(module, example, target=ct.target.iOS18)
    result = compress_program(program, qm.weights, _state(module))
    assert "conv.weight" in result.kept and "conv.weight" not in result.placed
    ops = {op.name: op for op in program.functions["main"].operations}
    stored = ops[result.kept["conv.weight"].new_ops[0]].outputs[0].val
    assert stored.dtype == np.float32
    assert np.array_equal(stored, qm.weights["conv.weight"].astype(np.float32))  # type: ignore[union-attr]


def test_ios17_int4_raises_and_int8_uses_affine_dequantize(tmp_path: Path) -> None:
    module = _Probe()
    example = torch.randint(0, 40, (1, 9), dtype=torch.int32)
    stub = _Stub(module, _PROBE_QUANTIZABLE)
    state = _state(module)
    program = _program(module, example, target=ct.target.iOS17)
    qm4 = quantize_model(stub, "int4")  # type: ignore[arg-type]
    with pytest.raises(BadInput, match=re.escape(TARGET_MESSAGE)):
        compress_program(program, qm4.weights, state)
    assert "constexpr" not in " ".join(op.op_type for op in program.functions["main"].operations)

    qm8 = quantize_model(stub, "int8")  # type: ignore[arg-type]
    result = compress_program(program, qm8.weights, state)
    path = _save(program, tmp_path / "ios17.mlpackage", target=ct.target.iOS17)
    assert _op_types(path).count("constexpr_affine_dequantize") == len(result.placed) == 5
    decoded = _decoded(path, result)
    for name, placed in result.placed.items():
        q = qm8.weights[name]
        assert isinstance(q, QuantizedTensor)
        expected = q.dequantize().T if placed.layout == "transpose" else q.dequantize()
        assert np.array_equal(decoded[name], expected), name


def test_asymmetric_weights_are_reported_not_placed() -> None:
    module = _Probe()
    example = torch.randint(0, 40, (1, 9), dtype=torch.int32)
    qm = quantize_model(_Stub(module, _PROBE_QUANTIZABLE), "int8")  # type: ignore[arg-type]
    q = qm.weights["conv.weight"]
    assert isinstance(q, QuantizedTensor)
    weights: Mapping[str, Any] = dict(qm.weights) | {
        "conv.weight": QuantizedTensor(q.codes, q.scales, np.zeros_like(q.scales), 8, q.block_size, q.shape)
    }
    program = _program(module, example, target=ct.target.iOS18)
    result = compress_program(program, weights, _state(module))
    assert [row["name"] for row in result.unplaced] == ["conv.weight"]
    assert "asymmetric" in result.unplaced[0]["reason"]


def test_unplaced_across_graphs(packages: dict[str, Any]) -> None:
    """A weight missing from one graph is skipped only if no graph placed it."""
    qm, result, _ = packages["int4"]
    other = CompressionResult(placed={name: result.placed[name] for name in list(result.placed)[:1]})
    rows = unplaced_across(qm.weights, [result, other])
    names = {row["name"] for row in rows}
    assert names == {row["name"] for row in result.unplaced}
    assert {row["name"] for row in rows if row["stored"] == "fp32"} == set(result.dense)
    assert not names & set(result.placed)
