"""The VITS family adapter on a tiny random checkpoint: loading, graph rewrite, synthesis, pruning.

The reference for "faithful" is transformers' own `VitsModel` forward with noise off: our split
encoder/decoder graphs (torch.where spline, explicit noise, frame count from the noise input) must
reproduce its waveform sample for sample.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import VitsModel, VitsTokenizer
from transformers.models.vits.modeling_vits import _unconstrained_rational_quadratic_spline

from voxport.errors import BadInput
from voxport.families import SynthesisSettings, detect_family, load_model
from voxport.families.vits import VitsFamily, VitsSettings
from voxport.families.vits.model import MARKER
from voxport.families.vits.spline import rational_quadratic_spline

SENTENCE = "hello world, this is a test."
NOISE_OFF = VitsSettings(noise_scale=0.0, noise_scale_duration=0.0)


@pytest.fixture(scope="module")
def ids(tiny_vits) -> list[int]:
    return tiny_vits.text_to_ids(SENTENCE)


@pytest.fixture(scope="module")
def runner(tiny_vits):
    return tiny_vits.torch_runner()


@pytest.fixture(scope="module")
def reference(tiny_vits, runner, ids):
    """Default settings (noise on, seed 0): the audio every other comparison is made against."""
    return tiny_vits.synthesize(runner, ids, SynthesisSettings())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


# --- detection and loading ----------------------------------------------------------------------


def test_detects_vits_directory_and_weights_file(tiny_vits_dir):
    assert detect_family(tiny_vits_dir) is VitsFamily
    assert detect_family(tiny_vits_dir / "model.safetensors") is VitsFamily


def test_unknown_architecture_names_supported_families(tiny_vits_dir, tmp_path):
    bert = _copy(tiny_vits_dir, tmp_path / "bert")
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 48}))
    supported = r"unknown architecture.*supported: kokoro, pocket_tts, vits, voxtral_tts"
    with pytest.raises(BadInput, match=supported):
        detect_family(bert)
    with pytest.raises(BadInput, match="unknown family 'bert'"):
        detect_family(tiny_vits_dir, forced="bert")


def test_missing_path_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_model(tmp_path / "does-not-exist")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_is_bad_input(tiny_vits_dir, tmp_path, damage):
    ckpt = _copy(tiny_vits_dir, tmp_path / damage)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 64)
    with pytest.raises(BadInput, match="not a readable safetensors file") as info:
        load_model(ckpt)
    assert str(weights) in str(info.value)


def test_pickled_checkpoint_needs_trust_pickle(tiny_vits, tiny_vits_dir, tmp_path):
    ckpt = tmp_path / "pickled"
    ckpt.mkdir()
    shutil.copy(tiny_vits_dir / "config.json", ckpt / "config.json")
    torch.save(load_file(str(tiny_vits_dir / "model.safetensors")), ckpt / "pytorch_model.bin")
    assert not list(ckpt.glob("*.safetensors"))

    with pytest.raises(BadInput, match="--trust-pickle"):
        load_model(ckpt)
    trusted = load_model(ckpt, trust_pickle=True)
    _assert_same_state(trusted.state_dict(), tiny_vits.state_dict())


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("hidden_size", 64, "shape"),
        ("num_hidden_layers", 3, "unexpected"),
        ("num_hidden_layers", 5, "missing"),
    ],
)
def test_config_not_matching_weights_is_bad_input(tiny_vits_dir, tmp_path, key, value, pattern):
    ckpt = _copy(tiny_vits_dir, tmp_path / f"{key}-{value}")
    config = json.loads((ckpt / "config.json").read_text())
    config[key] = value
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(BadInput, match=pattern) as info:
        load_model(ckpt)
    assert "config.json" in str(info.value)


# --- what the loaded model holds ----------------------------------------------------------------


def test_weight_norm_folded_and_posterior_encoder_dropped(tiny_vits):
    names = tiny_vits.state_dict().keys()
    assert not [n for n in names if "parametrizations" in n or n.endswith(("weight_g", "weight_v"))]
    assert not [n for n in names if n.startswith("posterior_encoder.")]
    assert tiny_vits.model.posterior_encoder is None
    # weight-norm convolutions now hold one plain weight (HiFi-GAN and the flow's WaveNet use weight norm)
    assert "decoder.upsampler.0.weight" in names
    assert "flow.flows.0.wavenet.in_layers.0.weight" in names


def test_quantizable_holds_linear_and_conv_kernels_only(tiny_vits):
    quantizable = tiny_vits.quantizable()
    state = tiny_vits.state_dict()
    for name in (
        "text_encoder.encoder.layers.0.attention.q_proj.weight",  # Linear
        "text_encoder.encoder.layers.3.feed_forward.conv_1.weight",  # Conv1d
        "decoder.conv_post.weight",  # Conv1d (weight norm folded)
        "decoder.upsampler.0.weight",  # ConvTranspose1d
    ):
        assert name in quantizable, name
    assert quantizable <= state.keys()
    assert all(n.endswith(".weight") and state[n].dim() >= 2 for n in quantizable)
    norms = {
        f"{m}.weight" for m, mod in tiny_vits.model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
    }
    assert norms and not norms & quantizable
    assert not [n for n in quantizable if "embed" in n or "emb_rel" in n]
    # every Linear/Conv kernel that inference runs is offered, nothing else: the duration predictor's
    # first conv flow is kept in the checkpoint but never run, and its training-only posterior is gone
    kernels = {
        f"{m}.weight"
        for m, mod in tiny_vits.model.named_modules()
        if isinstance(mod, torch.nn.Linear | torch.nn.Conv1d | torch.nn.ConvTranspose1d)
    }
    assert quantizable == kernels
    assert not [k for k in state if k.startswith(("duration_predictor.post_", "duration_predictor.flows.1."))]


# --- faithfulness to transformers ---------------------------------------------------------------


def test_synthesis_matches_transformers_vits_forward(tiny_vits, tiny_vits_dir, runner, ids):
    hf = VitsModel.from_pretrained(str(tiny_vits_dir)).eval()
    hf.noise_scale = 0.0
    hf.noise_scale_duration = 0.0
    hf.speaking_rate = 1.0
    with torch.no_grad():
        expected = hf(input_ids=torch.tensor([ids])).waveform[0].numpy()

    ours = tiny_vits.synthesize(runner, ids, NOISE_OFF)
    assert ours.audio.shape == expected.shape
    assert len(ours.audio) == int(ours.durations.sum()) * tiny_vits.hop_length
    assert np.abs(ours.audio - expected).max() < 1e-4
    assert np.abs(expected).max() > 1e-3  # not a comparison of two silences


@pytest.mark.parametrize("reverse", [False, True])
def test_spline_matches_transformers(reverse):
    generator = torch.Generator().manual_seed(0)
    bins, tail = 10, 5.0
    shape = (3, 7, 50)
    inputs = (torch.rand(shape, generator=generator) * 2 - 1) * 8.0  # ~37 % outside the tail bound
    inputs[0, 0, :4] = torch.tensor([-tail, tail, -tail - 1e-3, tail + 1e-3])
    widths = torch.randn((*shape, bins), generator=generator) * 2
    heights = torch.randn((*shape, bins), generator=generator) * 2
    derivatives = torch.randn((*shape, bins - 1), generator=generator) * 2
    outside = (inputs.abs() > tail).float().mean().item()
    assert 0.2 < outside < 0.5

    expected, _ = _unconstrained_rational_quadratic_spline(
        inputs, widths, heights, derivatives, reverse=reverse, tail_bound=tail
    )
    ours = rational_quadratic_spline(inputs, widths, heights, derivatives, reverse=reverse, tail_bound=tail)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-6)
    out_of_range = inputs.abs() > tail
    assert torch.equal(ours[out_of_range], inputs[out_of_range])  # identity outside, bit for bit
    # reverse undoes forward (in float64: steep random bins make the float32 inverse ill-conditioned,
    # ~2e-2 worst case here, for transformers' spline just the same)
    if not reverse:
        params = [t.double() for t in (widths, heights, derivatives)]
        there = rational_quadratic_spline(inputs.double(), *params, reverse=False, tail_bound=tail)
        back = rational_quadratic_spline(there, *params, reverse=True, tail_bound=tail)
        torch.testing.assert_close(back, inputs.double(), rtol=0, atol=1e-9)


# --- synthesis --------------------------------------------------------------------------------------


def test_same_seed_same_audio_other_seed_other_audio(tiny_vits, runner, ids, reference):
    again = tiny_vits.synthesize(runner, ids, SynthesisSettings())
    np.testing.assert_array_equal(again.audio, reference.audio)
    np.testing.assert_array_equal(again.durations, reference.durations)

    other = tiny_vits.synthesize(runner, ids, SynthesisSettings(seed=1))
    assert np.all(np.isfinite(other.audio))
    if other.audio.shape == reference.audio.shape:
        assert not np.allclose(other.audio, reference.audio, atol=1e-3)
    else:  # the duration noise changed the length: different audio too
        assert not np.array_equal(other.durations, reference.durations)


def test_forced_reference_durations_reproduce_reference(tiny_vits, runner, ids, reference):
    forced = reference.durations[None].astype(np.float32)
    again = tiny_vits.synthesize(runner, ids, SynthesisSettings(), forced_durations=forced)
    np.testing.assert_array_equal(again.audio, reference.audio)

    # forcing other durations changes the length exactly as asked
    longer = forced + 1
    stretched = tiny_vits.synthesize(runner, ids, SynthesisSettings(), forced_durations=longer)
    assert len(stretched.audio) == int(longer.sum()) * tiny_vits.hop_length


def test_fixture_audio_is_not_saturated(reference, tiny_vits):
    audio = reference.audio
    assert reference.sample_rate == tiny_vits.sample_rate == 16000
    assert np.all(np.isfinite(audio))
    assert np.mean(np.abs(audio) > 0.99) < 0.01
    assert np.sqrt(np.mean(audio**2)) > 1e-3  # and not silent either
    # durations of a few frames per token, as the synthetic checkpoint intends
    assert 1.5 < reference.durations.mean() < 10


def test_save_load_round_trip(tiny_vits, runner, ids, reference, tmp_path):
    out = tmp_path / "saved"
    tiny_vits.save(out)
    assert json.loads((out / MARKER).read_text())["layout"] == "folded"
    assert (out / "vocab.json").is_file()
    loaded = load_model(out)
    _assert_same_state(loaded.state_dict(), tiny_vits.state_dict())
    assert loaded.describe() == tiny_vits.describe()
    assert loaded.text_to_ids(SENTENCE) == ids
    audio = loaded.synthesize(loaded.torch_runner(), ids, SynthesisSettings()).audio
    np.testing.assert_array_equal(audio, reference.audio)


# --- pruning -----------------------------------------------------------------------------------------


def test_pruning_text_encoder_layers(tiny_vits, ids, reference, tmp_path):
    state = tiny_vits.state_dict()
    pruned = tiny_vits.pruned("text_encoder", [1, 3])

    assert pruned.config.num_hidden_layers == 2
    assert len(pruned.model.text_encoder.encoder.layers) == 2
    assert pruned.describe()["text_encoder_layers"] == 2
    assert pruned.prunable_stacks()[0].num_layers == 2
    # the original is untouched
    assert tiny_vits.config.num_hidden_layers == 4
    assert len(tiny_vits.model.text_encoder.encoder.layers) == 4

    pruned_state = pruned.state_dict()
    prefix = "text_encoder.encoder.layers."
    layer_ids = {int(n[len(prefix) :].split(".")[0]) for n in pruned_state if n.startswith(prefix)}
    assert layer_ids == {0, 1}
    q = "attention.q_proj.weight"
    assert torch.equal(pruned_state[f"{prefix}0.{q}"], state[f"{prefix}0.{q}"])
    assert torch.equal(pruned_state[f"{prefix}1.{q}"], state[f"{prefix}2.{q}"])  # renumbered
    assert pruned.parameters() < tiny_vits.parameters()

    audio = pruned.synthesize(pruned.torch_runner(), ids, SynthesisSettings()).audio
    assert audio.size > 0 and np.all(np.isfinite(audio))
    assert audio.shape != reference.audio.shape or not np.allclose(audio, reference.audio, atol=1e-3)

    # a pruned model saves and loads with its new config
    pruned.save(tmp_path / "pruned")
    reloaded = load_model(tmp_path / "pruned")
    assert reloaded.config.num_hidden_layers == 2
    _assert_same_state(reloaded.state_dict(), pruned_state)


@pytest.mark.parametrize(
    ("stack", "drop", "pattern"),
    [
        ("text_encoder", [4], "out of range"),
        ("text_encoder", [-1], "out of range"),
        ("text_encoder", [0, 1, 2, 3], "cannot drop all"),
        ("decoder", [0], "no prunable stack 'decoder'"),
    ],
)
def test_pruning_bad_requests(tiny_vits, stack, drop, pattern):
    with pytest.raises(BadInput, match=pattern):
        tiny_vits.pruned(stack, drop)


# --- text frontend ------------------------------------------------------------------------------------


def test_text_to_ids_matches_vits_tokenizer(tiny_vits, tiny_vits_dir):
    ids = tiny_vits.text_to_ids("hello")
    assert ids == VitsTokenizer.from_pretrained(str(tiny_vits_dir))("hello")["input_ids"]
    vocab = json.loads((tiny_vits_dir / "vocab.json").read_text())
    assert ids[0::2] == [0] * 6  # blanks interleaved, also at both ends
    assert ids[1::2] == [vocab[c] for c in "hello"]


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_bad_input(tiny_vits, text):
    with pytest.raises(BadInput, match="empty text"):
        tiny_vits.text_to_ids(text)


def test_text_outside_vocabulary_is_bad_input(tiny_vits):
    with pytest.raises(BadInput, match="no tokens"):
        tiny_vits.text_to_ids("123 日本")


@pytest.mark.parametrize("bad_ids", [[0, 5, 35], [3, -1], []])
def test_ids_outside_vocabulary_are_bad_input(tiny_vits, runner, bad_ids):
    assert tiny_vits.config.vocab_size == 35
    with pytest.raises(BadInput, match="input"):
        tiny_vits.synthesize(runner, bad_ids, NOISE_OFF)
    with pytest.raises(BadInput, match="input"):
        tiny_vits.synthesize_primary(runner, bad_ids, NOISE_OFF)
