"""Exactness of the Pocket TTS streaming speed-ups on the tiny model (issue 15).

Each lever must give the audio of the plain loop: the cached voice state (the voice prompt's
keys/values computed once) against the full prefill, the in-place KV cache graph (`backbone_kv`,
run by `OrtBindingRunner`) against the growing-cache `backbone`, the codec on its own thread against
the codec inline. The bound 100 dB is what float rounding alone gives with margin: the cached and
in-place forms only change how many rows a matmul sees (prefill) or how many exactly-zero terms an
attention sum adds (measured: bit-identical in ONNX Runtime, 121-122 dB in torch and for the fp32
in-place graph); a real mistake (a wrong position, a missing voice row, a stale cache slot) drops the
audio far below. The ONNX checks use fp32 graphs: ORT's int8 MatMulNBits quantizes activations, so
a 1e-7 change can flip an int8 rounding, which the random tiny model amplifies to ~47 dB over 8
frames of free running; that is the runtime's rounding, not the lever.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voxport.export.onnx.exporter import DEFAULT_OPSET, export_onnx
from voxport.export.onnx.trace import trace_graph
from voxport.families.base import FamilyModel
from voxport.families.pocket_tts.loop import LoopSettings, VoiceState, generate, voice_state
from voxport.families.pocket_tts.model import PocketTTSAdapter
from voxport.families.pocket_tts.settings import PocketSettings
from voxport.families.pocket_tts.synthetic import random_model
from voxport.quantize.stage import quantize_model
from voxport.runtime.base import Runner
from voxport.runtime.ort import OrtBindingRunner, OrtRunner
from voxport.runtime.torch import TorchRunner
from voxport.validate.metrics import tensor_snr_db

FRAMES = 8
EXACT_DB = 100.0
IDS = [5, 17, 230, 41, 9, 88, 3]


@pytest.fixture(scope="module")
def model() -> PocketTTSAdapter:
    """TINY_CONFIG, end of speech disabled so every run renders exactly FRAMES frames."""
    model = random_model(seed=0)
    with torch.no_grad():
        model.modules.flow_lm.out_eos.bias.fill_(-100.0)
    return model


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((5, 32)).astype(np.float32)


def _export(model: PocketTTSAdapter, out: Path, graphs: list, precision: str) -> dict[str, Path]:
    traced = {spec.name: (trace_graph(spec, DEFAULT_OPSET), spec.primary, spec.metadata) for spec in graphs}
    qm = quantize_model(model, precision)
    files = export_onnx(model, qm.weights, out, stem="tiny", precision=precision, metadata={}, traced=traced)
    return {f.graph: f.path for f in files}


@pytest.fixture(scope="module")
def onnx_files(model: PocketTTSAdapter, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """fp32 ONNX of the growing-cache graphs and of the in-place KV graphs (same weights)."""
    out = tmp_path_factory.mktemp("pocket_stream")
    return {
        "growing": _export(model, out / "growing", model.graphs(), "fp32"),
        "kv": _export(model, out / "kv", model.kv_graphs(), "fp32"),
    }


def _generate(runner: Runner, model: PocketTTSAdapter, **kwargs: object) -> np.ndarray:
    settings = LoopSettings(seed=3, temperature=0.5, max_frames=FRAMES)  # noise on: sampling paths too
    run = generate(runner, model.loop_spec, IDS, settings, **kwargs)  # type: ignore[arg-type]
    assert len(run.latents) == FRAMES
    return run.audio


def _runners(model: PocketTTSAdapter, files: dict[str, dict]) -> dict[str, Runner]:
    return {
        "torch": model.torch_runner(),
        "onnx": OrtRunner(files["growing"]),
        "onnx kv": OrtBindingRunner(files["kv"]),
    }


@pytest.mark.parametrize("name", ["torch", "onnx", "onnx kv"])
def test_cached_voice_equals_full_prefill(model, voice, onnx_files, name) -> None:
    runner = _runners(model, onnx_files)[name]
    full = _generate(runner, model, voice=voice)
    state = voice_state(runner, model.loop_spec, voice)
    assert state.positions == 1 + len(voice)  # bos_before_voice + the latents
    cached = _generate(runner, model, voice_cache=state)
    assert tensor_snr_db(full, cached) >= EXACT_DB
    # the state is not consumed: a second call gives the same audio again, bit for bit
    assert np.array_equal(cached, _generate(runner, model, voice_cache=state))


def test_voice_state_file_roundtrip(model, voice, tmp_path) -> None:
    runner = model.torch_runner()
    state = voice_state(runner, model.loop_spec, voice)
    state.save(str(tmp_path / "voice.npz"))
    loaded = VoiceState.load(str(tmp_path / "voice.npz"))
    assert loaded.past.keys() == state.past.keys()
    assert all(np.array_equal(loaded.past[k], state.past[k]) for k in state.past)
    assert np.array_equal(
        _generate(runner, model, voice_cache=state), _generate(runner, model, voice_cache=loaded)
    )


def test_kv_graph_equals_growing_graph_in_torch(model, voice) -> None:
    growing = _generate(model.torch_runner(), model, voice=voice)
    kv = _generate(TorchRunner(model.kv_graphs()), model, voice=voice)
    assert tensor_snr_db(growing, kv) >= EXACT_DB


def test_kv_graph_bound_in_place_equals_growing_onnx(model, voice, onnx_files) -> None:
    growing = _generate(OrtRunner(onnx_files["growing"]), model, voice=voice)
    bound = OrtBindingRunner(onnx_files["kv"])
    assert bound.inplace["backbone_kv"]["key_cache_0_out"] == "key_cache_0"
    assert tensor_snr_db(growing, _generate(bound, model, voice=voice)) >= EXACT_DB
    # the same graph without binding (ORT copies the cache through every scatter): same audio
    unbound = _generate(OrtRunner(onnx_files["kv"]), model, voice=voice)
    assert tensor_snr_db(growing, unbound) >= EXACT_DB


def test_binding_runner_writes_the_cache_in_place(model, onnx_files) -> None:
    spec = model.loop_spec
    runner = OrtBindingRunner(onnx_files["kv"])
    cache = {
        f"{kv}_cache_{i}": np.zeros((1, spec.kv_heads, 6, spec.head_dim), np.float32)
        for i in range(spec.num_layers)
        for kv in ("key", "value")
    }
    feed = {
        "token_ids": np.array([[5, 6]], np.int64),
        "latents": np.zeros((1, 2, spec.latent_dim), np.float32),
        "kind": np.zeros((1, 2), np.int64),
        "position": np.array([1], np.int64),
    }
    out = runner.run("backbone_kv", {**feed, **cache})
    key = cache["key_cache_0"]
    assert out["key_cache_0_out"] is key  # the caller's array, updated, not a copy
    assert np.all(key[:, :, 1:3] != 0) and np.all(key[:, :, [0, 3, 4, 5]] == 0)  # only slots 1, 2 written
    # one buffer passed for every cache: only its first binding writes in place, the others get copies;
    # a read-only buffer is copied too
    shared = np.zeros_like(key)
    frozen = np.zeros_like(key)
    frozen.flags.writeable = False
    same = runner.run("backbone_kv", {**feed, **dict.fromkeys(cache, shared), "key_cache_0": frozen})
    assert not frozen.any() and same["value_cache_0_out"] is shared
    assert all(np.array_equal(same[f"{name}_out"], out[f"{name}_out"]) for name in cache)


@pytest.mark.parametrize("name", ["torch", "onnx", "onnx kv"])
def test_codec_thread_gives_identical_audio(model, voice, onnx_files, name) -> None:
    runner = _runners(model, onnx_files)[name]
    inline = _generate(runner, model, voice=voice)
    threaded = _generate(runner, model, voice=voice, codec_thread=True)
    assert np.array_equal(inline, threaded)


def test_family_stream_options(model, voice, tmp_path) -> None:
    """`stream()` keeps its signature; voice cache and codec thread are keyword options, and
    `synthesize` (parity's path) is unchanged: full prefill, same samples as before."""
    np.save(tmp_path / "voice.npy", voice)
    fam: FamilyModel = model
    runner = model.torch_runner()
    settings = PocketSettings(voice=str(tmp_path / "voice.npy"), max_frames=FRAMES, temperature=0.0)
    whole = model.synthesize(runner, IDS, settings).audio
    assert np.array_equal(whole, np.concatenate(list(fam.stream(runner, IDS, settings))))  # defaults off
    fast = np.concatenate(list(model.stream(runner, IDS, settings, voice_cache=True, codec_thread=True)))
    assert tensor_snr_db(whole, fast) >= EXACT_DB
    assert len(model._voice_states[runner]) == 1  # computed once for this runner and voice
    again = np.concatenate(list(model.stream(runner, IDS, settings, voice_cache=True)))
    assert np.array_equal(fast, again) and len(model._voice_states[runner]) == 1


def test_artifact_stream_options(onnx_files, voice, tmp_path) -> None:
    """The exported artifact's voice (what `voxport say` and the runtime API open) has the same options:
    off, its frames are `speak`'s exact audio; on, the same audio (bit-identical in ONNX Runtime)."""
    from voxport.families.pocket_tts.artifact import PocketArtifactVoice

    np.save(tmp_path / "voice.npy", voice)
    artifact = PocketArtifactVoice.onnx(onnx_files["growing"]["backbone"])
    settings = PocketSettings(voice=str(tmp_path / "voice.npy"), max_frames=FRAMES, temperature=0.0)
    whole = artifact.speak(IDS, settings)
    assert np.array_equal(whole, np.concatenate(list(artifact.stream(IDS, settings))))
    fast = artifact.stream(IDS, settings, voice_cache=True, codec_thread=True)
    assert tensor_snr_db(whole, np.concatenate(list(fast))) >= EXACT_DB
    assert len(artifact._voice_states) == 1


@pytest.mark.parametrize("head_dim", [24, 64])
def test_rope_table_once_is_bit_identical_to_the_pairwise_form(head_dim) -> None:
    """RoPE from one per-call table, applied as x·cos + (x @ pair-swap)·sin, against Kyutai's literal
    per-call form (angles per layer, pairs rotated by stack): equal to the bit, so the torch reference
    and every exported graph keep their numbers."""
    import math

    from voxport.families.pocket_tts.modules import rope, rope_table

    x = torch.randn(1, 37, 4, head_dim, generator=torch.Generator().manual_seed(0)) * 10
    positions = torch.arange(37, dtype=torch.float32) + 600
    freqs = torch.exp(torch.arange(head_dim // 2, dtype=torch.float32) * (-math.log(10000.0) * 2 / head_dim))
    angles = freqs * positions.view(-1, 1, 1)
    cos, sin = torch.cos(angles), torch.sin(angles)
    pairs = x.reshape(1, 37, 4, head_dim // 2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    kyutai = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).reshape(x.shape)
    assert torch.equal(rope(x, rope_table(positions, head_dim, 10000.0)), kyutai)
