"""Core ML conversion of the tiny VITS graphs: packages, shapes, weights, metadata and clear errors.

Each graph is converted once per module (a few seconds each); Core ML `predict` is macOS-only, so
numerics are checked through the numpy MIL interpreter (`voxport.runtime.coreml`) instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import pytest
import torch
from torch import nn
from transformers.models.vits.modeling_vits import VitsAttention

from voxport import __version__
from voxport.errors import BadInput
from voxport.export.coreml import (
    convert_graph,
    program_to_mlmodel,
    read_metadata,
    save_mlpackage,
    to_program,
    weight_consts,
)
from voxport.export.coreml.metadata import apply_metadata
from voxport.families import FamilyModel
from voxport.families.base import GraphSpec
from voxport.families.vits.attention import WindowedRelativeAttention
from voxport.families.vits.graphs import EncoderGraph
from voxport.runtime.coreml import CoremlRunner

USER_META = {"family": "vits", "sample_rate": 16000, "precision": "fp32", "recipe": "tiny.yaml"}


@dataclass
class Converted:
    spec: GraphSpec
    path: Path
    #: weight_consts of the program before serialization (None when converted in one step)
    consts: dict[str, Any] | None


def _specs(model: FamilyModel) -> dict[str, GraphSpec]:
    return {s.name: s for s in model.graphs()}


@pytest.fixture(scope="module")
def converted(tiny_vits: FamilyModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Converted]:
    """fp32 / iOS18 / default flexible shapes: the encoder through the two-step API (program, then
    MLModel), the decoder through `convert_graph`."""
    out = tmp_path_factory.mktemp("coreml")
    specs = _specs(tiny_vits)
    descriptions = {
        name: {spec.input_names[0]: "first input", spec.output_names[0]: "first output"}
        for name, spec in specs.items()
    }
    encoder = specs["encoder"]
    program = to_program(encoder, target="iOS18", compute_precision="fp32")
    consts = weight_consts(program, tiny_vits.state_dict())
    mlmodel = program_to_mlmodel(program, target="iOS18", graph="encoder")
    apply_metadata(
        mlmodel,
        graph="encoder",
        license="CC0-1.0",
        short_description="tiny VITS encoder",
        descriptions=descriptions["encoder"],
        user_metadata=USER_META,
    )
    decoder = specs["decoder"]
    decoder_model = convert_graph(
        decoder,
        target="iOS18",
        compute_precision="fp32",
        descriptions=descriptions["decoder"],
        user_metadata=USER_META,
        license="CC0-1.0",
        short_description="tiny VITS decoder",
    )
    return {
        "encoder": Converted(encoder, save_mlpackage(mlmodel, out / "tiny.encoder.mlpackage"), consts),
        "decoder": Converted(decoder, save_mlpackage(decoder_model, out / "tiny.decoder.mlpackage"), None),
    }


def _description(path: Path) -> Any:
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec().description


def _graph_weights(model: FamilyModel, graph: str) -> set[str]:
    prefixes = ("text_encoder.", "duration_predictor.") if graph == "encoder" else ("flow.", "decoder.")
    return {n for n in model.quantizable() if n.startswith(prefixes)}


# --- attention rewrite -----------------------------------------------------------------------------
def test_windowed_attention_is_installed_and_equals_transformers(tiny_vits: FamilyModel) -> None:
    model = tiny_vits.model
    layers = model.text_encoder.encoder.layers
    assert all(type(layer.attention) is WindowedRelativeAttention for layer in layers)
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, VitsAttention):
            module.__class__ = VitsAttention
    window = model.config.window_size
    rewritten, original = EncoderGraph(model), EncoderGraph(reference)
    generator = torch.Generator().manual_seed(0)
    for length in (1, 2, window, window + 1, window + 2, 3 * window + 1, 23):
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
        noise = torch.randn(1, 2, length, generator=generator)
        with torch.no_grad():
            got = rewritten(ids, noise, torch.ones(1))
            want = original(ids, noise, torch.ones(1))
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape
            assert float((a - b).abs().max()) <= 1e-5, length


# --- packages ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_package_loads_with_named_int32_inputs_and_outputs(
    converted: dict[str, Converted], graph: str
) -> None:
    item = converted[graph]
    assert item.path.is_dir() and (item.path / "Manifest.json").is_file()
    assert not [p for p in item.path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    description = _description(item.path)
    assert [f.name for f in description.input] == item.spec.input_names
    assert [f.name for f in description.output] == item.spec.output_names
    dtypes = {f.name: f.type.multiArrayType.dataType for f in description.input}
    int32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    for name, example in zip(item.spec.input_names, item.spec.example_inputs, strict=True):
        assert (dtypes[name] == int32) == (example.dtype == torch.int64), name


def _ranges(path: Path) -> dict[str, list[tuple[int, int]]]:
    return {
        f.name: [(r.lowerBound, r.upperBound) for r in f.type.multiArrayType.shapeRange.sizeRanges]
        for f in _description(path).input
    }


def test_encoder_has_flexible_token_length(converted: dict[str, Converted]) -> None:
    ranges = _ranges(converted["encoder"].path)
    assert ranges["input_ids"] == [(1, 1), (1, 512)]
    assert ranges["noise_w"] == [(1, 1), (2, 2), (1, 512)]
    assert ranges["length_scale"] == []  # fixed shape


def test_decoder_has_flexible_tokens_and_frames(converted: dict[str, Converted]) -> None:
    ranges = _ranges(converted["decoder"].path)
    assert ranges["m_p"][2] == (1, 512) and ranges["durations"][1] == (1, 512)
    assert ranges["noise"][2] == (1, 8192)


@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_weights_survive_as_const_ops(
    tiny_vits: FamilyModel, converted: dict[str, Converted], graph: str
) -> None:
    item = converted[graph]
    expected = _graph_weights(tiny_vits, graph)
    assert expected
    if item.consts is not None:
        assert expected <= set(item.consts)
        found = {n: item.consts[n] for n in expected}
        assert all(c.op_name == f"model.{n}" and c.dtype == "float32" for n, c in found.items())
    # and they are stored as weight-file consts in the package (serialization turns '.' into '_')
    spec = ct.models.MLModel(str(item.path), skip_model_load=True).get_spec()
    blocks = spec.mlProgram.functions["main"].block_specializations
    ops = next(iter(blocks.values())).operations
    blobs = {
        o.outputs[0].name for o in ops if o.type == "const" and o.attributes["val"].HasField("blobFileValue")
    }
    assert {f"model.{n}".replace(".", "_") for n in expected} <= blobs


@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_metadata_round_trips(converted: dict[str, Converted], graph: str) -> None:
    item = converted[graph]
    meta = read_metadata(ct.models.MLModel(str(item.path), skip_model_load=True).get_spec())
    assert meta["author"] == "voxport" and meta["license"] == "CC0-1.0"
    assert meta["short_description"] == f"tiny VITS {graph}" and meta["version"] == __version__
    first = {item.spec.input_names[0]: "first input", item.spec.output_names[0]: "first output"}
    assert meta["descriptions"] == first
    user = meta["user_defined_metadata"]
    assert {k: user[k] for k in USER_META} == {k: str(v) for k, v in USER_META.items()}
    assert user["graph"] == graph and user["voxport_version"] == __version__
    if graph == "decoder":  # convert_graph merges the graph's own metadata underneath
        assert user["hop_length"] == item.spec.metadata["hop_length"]


def test_unknown_description_name_is_bad_input(converted: dict[str, Converted]) -> None:
    mlmodel = ct.models.MLModel(str(converted["encoder"].path), skip_model_load=True)
    with pytest.raises(BadInput, match="no input or output named 'input'"):
        apply_metadata(mlmodel, graph="encoder", descriptions={"input": "typo"})


def test_mil_interpreter_matches_torch_at_other_lengths(
    tiny_vits: FamilyModel, converted: dict[str, Converted]
) -> None:
    """The flexible programs compute the right thing at lengths other than the traced example."""
    coreml = CoremlRunner({g: c.path for g, c in converted.items()})
    reference = tiny_vits.torch_runner()
    rng = np.random.default_rng(0)
    for tokens in (3, 13):
        feed = {
            "input_ids": rng.integers(0, tiny_vits.config.vocab_size, (1, tokens)),
            "noise_w": rng.standard_normal((1, 2, tokens)).astype(np.float32),
            "length_scale": np.ones(1, np.float32),
        }
        got, want = coreml.run("encoder", feed), reference.run("encoder", feed)
        for name in ("m_p", "logs_p"):
            np.testing.assert_allclose(got[name], want[name], atol=1e-4)
        frames = 2 * tokens + 1
        feed = {
            "m_p": want["m_p"],
            "logs_p": want["logs_p"],
            "durations": np.full((1, tokens), 2.0, np.float32),
            "noise": rng.standard_normal((1, want["m_p"].shape[1], frames)).astype(np.float32),
        }
        got, want = coreml.run("decoder", feed), reference.run("decoder", feed)
        np.testing.assert_allclose(got["waveform"], want["waveform"], atol=1e-4)


# --- variants ---------------------------------------------------------------------------------------
def test_fp16_with_enumerated_buckets(tiny_vits: FamilyModel, tmp_path: Path) -> None:
    """One conversion for two variants: fp16 compute precision and EnumeratedShapes buckets."""
    spec = _specs(tiny_vits)["decoder"]
    program = to_program(
        spec, target="macOS15", compute_precision="fp16", buckets={"tokens": [8, 16], "frames": [12, 48]}
    )
    consts = weight_consts(program, tiny_vits.state_dict())
    weights = _graph_weights(tiny_vits, "decoder")
    assert weights <= set(consts)
    assert all(consts[n].dtype == "float16" and consts[n].op_name.endswith("_to_fp16") for n in weights)
    path = save_mlpackage(program_to_mlmodel(program, target="macOS15"), tmp_path / "dec16.mlpackage")
    description = _description(path)
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert all(f.type.multiArrayType.dataType == float32 for f in description.input)  # I/O stays fp32
    shapes = {
        f.name: [tuple(s.shape) for s in f.type.multiArrayType.enumeratedShapes.shapes]
        for f in description.input
    }
    # the i-th shapes of all inputs form the i-th combination tokens × frames
    assert shapes["durations"] == [(1, 8), (1, 8), (1, 16), (1, 16)]
    assert shapes["m_p"] == [(1, 32, 8), (1, 32, 8), (1, 32, 16), (1, 32, 16)]
    assert shapes["noise"] == [(1, 32, 12), (1, 32, 48), (1, 32, 12), (1, 32, 48)]


def test_multi_input_buckets_need_ios18(tiny_vits: FamilyModel) -> None:
    with pytest.raises(BadInput, match="only on iOS18"):
        encoder = _specs(tiny_vits)["encoder"]
        to_program(encoder, target="iOS17", compute_precision="fp32", buckets={"tokens": [8, 16]})


# --- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "iOS16", "compute_precision": "fp32"}, "Core ML target 'iOS16'.*iOS17, iOS18, macOS14"),
        ({"target": "ios18", "compute_precision": "fp32"}, "unknown Core ML target 'ios18'"),
        ({"target": "iOS18", "compute_precision": "int8"}, "compute precision 'int8'.*fp32, fp16"),
        (
            {"target": "iOS18", "compute_precision": "fp32", "flexible": {"frames": (1, 9)}},
            "no variable axis 'frames'",
        ),
    ],
)
def test_bad_arguments_are_bad_input(tiny_vits: FamilyModel, kwargs: dict, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        to_program(_specs(tiny_vits)["encoder"], **kwargs)


def test_tts_graph_is_refused(tiny_vits: FamilyModel) -> None:
    with pytest.raises(BadInput, match="graph 'tts' cannot be converted to Core ML.*output 'output' depends"):
        convert_graph(_specs(tiny_vits)["tts"], target="iOS18", compute_precision="fp32")


class _Erfinv(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erfinv(x)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), _Erfinv())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) * 2


def test_unsupported_op_names_op_and_module() -> None:
    spec = GraphSpec("odd", _Net(), ["x"], ["y"], (torch.zeros(1, 4),), {})
    with pytest.raises(BadInput) as info:
        to_program(spec, target="iOS18", compute_precision="fp32")
    message = str(info.value)
    assert message.startswith("CoreML cannot convert op 'erfinv' in module block.1 (graph odd): ")
    assert "\n" not in message


class _Failing:
    """An MLModel stand-in whose save dies half-way through writing the package."""

    def save(self, path: str) -> None:
        Path(path).mkdir()
        (Path(path) / "Manifest.json").write_text("{}")
        raise OSError("disk full")


def test_save_is_atomic(tmp_path: Path, converted: dict[str, Converted]) -> None:
    target = tmp_path / "x.mlpackage"
    with pytest.raises(OSError, match="disk full"):
        save_mlpackage(_Failing(), target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory
    with pytest.raises(BadInput, match=r"\.mlpackage"):
        save_mlpackage(_Failing(), tmp_path / "x.mlmodel")
