"""The voxtral_tts family on a tiny random checkpoint in Mistral's consolidated layout: loading and its
errors, the speech prompt against mistral-common's, the synthesis loop (teacher forcing, streaming,
the end-of-audio rule), save/load, pruning, and the CLI's demo, inspect and say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from voxport.cli import app
from voxport.errors import BadInput
from voxport.families.registry import detect_family, load_model
from voxport.families.voxtral_tts.config import END_AUDIO
from voxport.families.voxtral_tts.model import VoxtralAdapter
from voxport.families.voxtral_tts.settings import VoxtralSettings
from voxport.families.voxtral_tts.synthetic import make_checkpoint
from voxport.validate.metrics import waveform_snr_db

TEXT = "Turn left at the next corner."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("vx") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> VoxtralAdapter:
    loaded = load_model(checkpoint, trust_pickle=True)
    assert isinstance(loaded, VoxtralAdapter)
    return loaded


def _settings(**kw: object) -> VoxtralSettings:
    return VoxtralSettings(**{"max_frames": 8, "voice": "ava", **kw})


def test_the_consolidated_layout_is_recognised_and_loads(checkpoint: Path, model: VoxtralAdapter) -> None:
    assert detect_family(checkpoint).name == "voxtral_tts"
    assert detect_family(checkpoint / "consolidated.safetensors").name == "voxtral_tts"
    assert sorted(model.voices) == ["ava", "leo"]
    assert model.voices["ava"].shape == (3, model.cfg.backbone.dim)
    assert model.sample_rate == 24000 and model.cfg.codec.frame_size == 1920


def test_pickled_voice_presets_need_trust(checkpoint: Path) -> None:
    with pytest.raises(BadInput, match=r"ava\.pt: voice presets in \.pt are pickles.*trust_pickle"):
        load_model(checkpoint)


def test_the_prompt_is_mistral_commons(model: VoxtralAdapter) -> None:
    """The loop builds [BOS][BEGIN_AUDIO][AUDIO]*n[TEXT_TO_AUDIO] text [AUDIO_TO_TEXT][BEGIN_AUDIO]
    itself (an artifact has no mistral-common); it must be exactly what encode_speech_request gives."""
    from voxport.families.voxtral_tts.loop import prompt_ids

    for voice in ("ava", "leo"):
        expected = model.prompt.encode(TEXT, voice)
        assert prompt_ids(model.loop_spec, model.text_to_ids(TEXT), len(model.voices[voice])) == expected


def test_synthesis_is_deterministic_and_streams_the_same_audio(model: VoxtralAdapter) -> None:
    runner, ids = model.torch_runner(), model.text_to_ids(TEXT)
    first = model.synthesize(runner, ids, _settings())
    again = model.synthesize(runner, ids, _settings())
    assert first.audio.shape == (8 * 1920,)
    np.testing.assert_array_equal(first.audio, again.audio)
    rms = float(np.sqrt(np.mean(first.audio**2)))
    assert 1e-3 < rms < 1.0  # neither silent nor saturating: parity figures mean something
    streamed = np.concatenate(list(model.stream(runner, ids, _settings())))
    np.testing.assert_array_equal(streamed, first.audio)
    other_seed = model.synthesize(runner, ids, _settings(seed=1))
    assert not np.array_equal(other_seed.tensors["acoustic"], first.tensors["acoustic"])
    other_voice = model.synthesize(runner, ids, _settings(voice="leo"))
    assert not np.array_equal(other_voice.tensors["hidden"], first.tensors["hidden"])


def test_teacher_forcing_replays_the_references_codes(model: VoxtralAdapter) -> None:
    runner, ids = model.torch_runner(), model.text_to_ids(TEXT)
    ref = model.synthesize(runner, ids, _settings())
    forced = model.synthesize(runner, ids, _settings(seed=5), forced=ref)
    # the codes fed back and decoded are the reference's, so the audio is identical even though the
    # head (another seed) integrates other values at every step
    np.testing.assert_array_equal(forced.audio, ref.audio)
    assert not np.array_equal(forced.tensors["acoustic"], ref.tensors["acoustic"])
    assert forced.tensors["hidden"].shape == ref.tensors["hidden"].shape


def test_end_of_audio_stops_the_loop(model: VoxtralAdapter) -> None:
    """A semantic layer that always prefers [END_AUDIO] stops at frame 0: no audio, nothing decoded."""
    state = model.state_dict()
    bias = state["acoustic_transformer.semantic_codebook_output.weight"].clone()
    bias[END_AUDIO] = 0
    bias[END_AUDIO, :] = 50.0 * torch.sign(torch.ones_like(bias[END_AUDIO]))
    ended = model.with_weights({**state, "acoustic_transformer.semantic_codebook_output.weight": bias})
    runner = ended.torch_runner()
    hidden = runner.run("backbone", _backbone_inputs(ended))["hidden"][:, -1]
    codes = runner.run("acoustic_head", {"hidden": hidden, "noise": np.zeros((1, 36), np.float32)})["codes"]
    if int(codes[0, 0]) != END_AUDIO:  # the state's sign pattern decides; flip the row the other way
        bias[END_AUDIO, :] = -50.0
        ended = model.with_weights({**state, "acoustic_transformer.semantic_codebook_output.weight": bias})
    out = ended.synthesize(ended.torch_runner(), model.text_to_ids(TEXT), _settings())
    assert out.audio.size == 0 and len(out.tensors["codes"]) == 0
    assert len(out.tensors["hidden"]) == 1  # the [END_AUDIO] step's state is still a step


def _backbone_inputs(model: VoxtralAdapter) -> dict[str, np.ndarray]:
    from voxport.families.voxtral_tts.loop import prompt_inputs

    spec = model.loop_spec
    inputs = prompt_inputs(spec, model.text_to_ids(TEXT), model.voices["ava"])
    empty = np.zeros((1, spec.kv_heads, 0, spec.head_dim), np.float32)
    layers = [f"past_{kv}_{i}" for i in range(spec.num_layers) for kv in ("key", "value")]
    return {**inputs, "position": np.asarray([0], np.int64), **{n: empty for n in layers}}


def test_save_writes_the_layout_back(model: VoxtralAdapter, tmp_path: Path) -> None:
    model.save(tmp_path / "saved")
    again = load_model(tmp_path / "saved")  # voices saved as safetensors: no pickle needed
    assert isinstance(again, VoxtralAdapter)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value, rtol=1e-6, atol=1e-6)
    for name, rows in model.voices.items():
        np.testing.assert_array_equal(again.voices[name], rows)
    names = set(load_file(str(tmp_path / "saved" / "consolidated.safetensors")))
    assert "audio_tokenizer.output_proj.conv.parametrizations.weight.original1" in names
    assert "audio_tokenizer.quantizer.semantic_codebook.embedding_sum" in names


def test_broken_checkpoints_are_one_line_errors(checkpoint: Path, tmp_path: Path) -> None:
    def copy(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(checkpoint, out)
        return out

    no_tekken = copy("no-tekken")
    (no_tekken / "tekken.json").unlink()
    with pytest.raises(BadInput, match=r"no tekken\.json"):
        load_model(no_tekken, trust_pickle=True)

    short = copy("missing-tensor")
    tensors = load_file(str(short / "consolidated.safetensors"))
    del tensors["layers.1.feed_forward.w2.weight"]
    save_file(tensors, str(short / "consolidated.safetensors"))
    with pytest.raises(BadInput, match=r"missing from the checkpoint: layers\.1\.feed_forward\.w2\.weight"):
        load_model(short, trust_pickle=True)

    wrong = copy("wrong-params")
    params = json.loads((wrong / "params.json").read_text())
    params["hidden_dim"] = 192
    (wrong / "params.json").write_text(json.dumps(params))
    with pytest.raises(BadInput, match=r"layers\.0\.feed_forward\.w1\.weight has shape \(160, 64\), params"):
        load_model(wrong, trust_pickle=True)

    damaged = copy("damaged")
    (damaged / "consolidated.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(BadInput, match="consolidated.safetensors"):
        load_model(damaged, trust_pickle=True)


def test_pruning_the_backbone(model: VoxtralAdapter) -> None:
    pruned = model.pruned("backbone", [0])
    assert pruned.cfg.backbone.n_layers == 1
    torch.testing.assert_close(
        pruned.state_dict()["layers.0.attention.wq.weight"], model.state_dict()["layers.1.attention.wq.weight"]
    )
    out = pruned.synthesize(pruned.torch_runner(), model.text_to_ids(TEXT), _settings(max_frames=2))
    assert out.audio.shape == (2 * 1920,)
    with pytest.raises(BadInput, match="cannot drop all 2 layers"):
        model.pruned("backbone", [0, 1])


def test_weightless_stream_source_matches_the_loaded_model(checkpoint: Path, model: VoxtralAdapter) -> None:
    """The streaming converter's view of the checkpoint: the same weights, read one at a time, and
    graphs over placeholder weights that still compute (with zeros) at the real shapes."""
    from voxport.families.registry import family_named

    source = family_named("voxtral_tts").stream_source(checkpoint, trust_pickle=True)
    state = model.state_dict()
    assert dict(source.shapes) == {k: tuple(v.shape) for k, v in state.items()}
    for name in ("layers.0.attention.wq.weight", "audio_tokenizer.decoder_blocks.2.conv.weight",
                 "audio_tokenizer.quantizer.semantic_codebook.embedding"):
        torch.testing.assert_close(source.read(name, None), state[name])
    table = "mm_audio_embeddings.tok_embeddings.weight"
    torch.testing.assert_close(source.read(table, slice(10, 20)), state[table][10:20])
    placeholder = source.model.state_dict()["layers.0.attention.wq.weight"]
    assert placeholder.stride() == (0, 0)  # no memory behind the weightless model's weights


def test_cli_demo_inspect_and_say(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["demo", str(tmp_path / "ck"), "--family", "voxtral_tts"])
    assert done.exit_code == 0, done.output
    shown = runner.invoke(app, ["inspect", str(tmp_path / "ck"), "--trust-pickle", "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["family"] == "voxtral_tts"
    wav = tmp_path / "out.wav"
    said = runner.invoke(
        app,
        ["say", str(tmp_path / "ck"), TEXT, "-o", str(wav), "--voice", "leo", "--trust-pickle",
         "--max-frames", "3"],
    )
    assert said.exit_code == 0, said.output
    assert wav.stat().st_size > 3 * 1920 * 2
    bad = runner.invoke(app, ["demo", str(tmp_path / "x"), "--family", "voxtral_tts", "--config", "huge"])
    assert bad.exit_code == 2 and "unknown Voxtral TTS config 'huge'" in bad.output


def test_streamed_audio_equals_torch_in_onnx_runtime(model: VoxtralAdapter, tmp_path: Path) -> None:
    """The three graphs traced to ONNX (fp32) speak the torch reference's audio."""
    import onnx

    from voxport.export.onnx.trace import trace_graph
    from voxport.runtime.ort import OrtRunner

    files = {}
    for spec in model.graphs():
        files[spec.name] = tmp_path / f"{spec.name}.onnx"
        onnx.save(trace_graph(spec), files[spec.name])
    ids = model.text_to_ids(TEXT)
    ref = model.synthesize(model.torch_runner(), ids, _settings())
    got = model.synthesize(OrtRunner(files), ids, _settings())
    np.testing.assert_array_equal(got.tensors["codes"], ref.tensors["codes"])
    # the same float32 math in another runtime: measured 125 dB here
    assert (waveform_snr_db(ref.audio, got.audio) or 0) >= 80
