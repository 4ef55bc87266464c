"""Kokoro in GGUF and Core ML: its tensor names fit GGUF, and its decoder converts to Core ML and runs in
voxport's MIL interpreter (the harmonic source resampled without F.interpolate, the BiLSTM as MIL lstm).

The model here is Kokoro's architecture with a one-layer, 32-wide ALBERT and random weights (the decoder's
widths are fixed by the architecture), so the checks are about the graph, not about a trained voice."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from voxport.export.coreml.convert import program_to_mlmodel, save_mlpackage, to_program
from voxport.export.gguf.names import MAX_NAME_BYTES, from_gguf, to_gguf
from voxport.families.base import GraphSpec
from voxport.families.kokoro.model import HARMONICS, KokoroModel
from voxport.families.kokoro.modules import HarmonicSource, KokoroNet
from voxport.families.kokoro.source import KOKORO_CONFIG
from voxport.runtime.mil import MilInterpreter, load_mlpackage

warnings.filterwarnings("ignore", module="coremltools")
logging.getLogger("coremltools").setLevel(logging.ERROR)


def _small_config() -> dict[str, Any]:
    config = copy.deepcopy(KOKORO_CONFIG)
    config.update(n_layer=1)  # hidden 512 and style 128 are fixed by the decoder and the voices
    config["plbert"].update(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
    return config


def _snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    err = np.sum((ref - np.asarray(out, np.float64)) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(ref**2) / err))


def test_every_kokoro_weight_name_round_trips_through_gguf() -> None:
    names = KokoroNet(_small_config()).state_dict().keys()  # the same names as the full model's
    for name in names:
        short = to_gguf(name)
        assert len(short.encode()) <= MAX_NAME_BYTES and from_gguf(short) == name
    assert to_gguf("bert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight") == (
        "bert.encoder.agrp.0.alyr.0.ffn_up.weight"
    )


def test_explicit_resampling_follows_f_interpolate() -> None:
    torch.manual_seed(0)
    source = HarmonicSource(24_000, 300)
    x = torch.randn(1, 9, 40 * 300) * 100
    # downsampling by 300: the two middle samples of each block, halved, exactly as torch
    assert torch.equal(source._down(x), F.interpolate(x, scale_factor=1 / 300, mode="linear"))
    # upsampling: torch's kernel places sources in float32, so it differs at rounding level (measured
    # ~3e-7 of the signal over 80 frames); 1e-5 leaves a wide margin for other CPUs
    y = torch.randn(1, 9, 80) * 100
    ref = F.interpolate(y, scale_factor=300, mode="linear")
    assert (source._up(y) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_harmonic_source_keeps_its_harmonics_in_core_ml(tmp_path: Path) -> None:
    """The source's `% 1` through coremltools and the MIL interpreter. coremltools converts x % 1 to
    x − floor_div(x, 1)·1 and its noop_elimination drops floor_div(x, 1) as an identity, so a Core ML
    source was x − x = 0: no harmonics, the real voice's decoder at −0.3 dB. The small test model never
    showed it: its random pitch stays under the 10 Hz voicing threshold, where the sines are muted."""
    torch.manual_seed(0)
    source = HarmonicSource(24_000, 300).eval()
    source.explicit_resample = True
    frames = 12
    # voiced pitch, with harmonics past the sample rate (9 × 3 kHz) so the wrap-around is exercised too
    f0 = torch.linspace(80.0, 3000.0, frames)[None, :, None].expand(-1, -1, 300).reshape(1, -1, 1)
    noise = torch.randn(1, frames * 300, HARMONICS)
    spec = GraphSpec("source", source, ["f0", "noise"], ["excitation"], (f0, noise), {})
    program = to_program(spec, target="iOS17", compute_precision="fp32")
    path = save_mlpackage(
        program_to_mlmodel(program, target="iOS17", graph="source"), tmp_path / "s.mlpackage"
    )
    out = MilInterpreter(load_mlpackage(path)).run({"f0": f0.numpy(), "noise": noise.numpy()})["excitation"]
    with torch.no_grad():
        ref = source(f0, noise).numpy()
    # the same float32 ops on both sides: measured 84.8 dB (8.6 dB with the sines gone); 60 leaves room for
    # other CPUs' rounding of a phase that reaches 10^4 radians here
    assert _snr_db(ref, out) >= 60


@pytest.mark.slow  # converts and interprets a decoder with Kokoro's fixed 1024-channel blocks (~1 min)
def test_decoder_converts_to_core_ml_and_runs_in_the_mil_interpreter(
    decoder_outputs: tuple[np.ndarray, np.ndarray],
) -> None:
    out, ref = decoder_outputs
    assert out.shape == ref.shape and np.isfinite(out).all()


@pytest.mark.slow
def test_core_ml_decoder_matches_torch(decoder_outputs: tuple[np.ndarray, np.ndarray]) -> None:
    out, ref = decoder_outputs
    # float32 both sides, one op order apart; the resampling differs at rounding level only. Measured
    # 80.6 dB. One ±π flip of a source phase (the first STFT frame's, before DFT.transform set it from
    # the real part) cost 34 dB here; 60 catches that and leaves 20 dB for other CPUs' BLAS rounding
    assert _snr_db(ref, out) >= 60


@pytest.fixture(scope="module")
def decoder_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """The decoder converted to Core ML and run in the MIL interpreter, and torch's output, same inputs."""
    tmp_path = tmp_path_factory.mktemp("kokoro-coreml")
    torch.manual_seed(0)
    net = KokoroNet(_small_config()).eval()
    voices = {"af_test": np.zeros((510, 1, 2 * net.style_dim), np.float32)}
    model = KokoroModel(net, _small_config(), voices, source="test")
    graphs = {g.name: g for g in model.bounded_graphs(512)}
    assert sorted(graphs) == ["decoder", "encoder"]  # tts sizes its audio by predicted durations
    spec = graphs["decoder"]
    assert spec.module.model.decoder.generator.m_source.explicit_resample
    assert not net.decoder.generator.m_source.explicit_resample  # the torch reference is untouched

    program = to_program(spec, target="iOS17", compute_precision="fp32")
    path = save_mlpackage(
        program_to_mlmodel(program, target="iOS17", graph="decoder"), tmp_path / "d.mlpackage"
    )
    interpreter = MilInterpreter(load_mlpackage(path))
    assert {"lstm", "conv_transpose", "instance_norm", "cumsum", "atan"} <= set(interpreter.op_types())

    tokens = 6
    durations = torch.tensor([[2.0, 3.0, 1.0, 4.0, 2.0, 3.0]])
    spf = model.samples_per_frame
    samples = int(durations.sum()) * spf
    inputs = {
        "d": torch.randn(1, tokens, 512 + net.style_dim),
        "t_en": torch.randn(1, 512, tokens),
        "durations": durations,
        "style": torch.randn(1, 2 * net.style_dim) * 0.1,
        "noise": (torch.randn(1, samples, HARMONICS) * 0.5).reshape(
            1, -1, model.samples_per_frame * HARMONICS
        ),
    }
    out = interpreter.run({k: v.numpy() for k, v in inputs.items()})["audio"]
    with torch.no_grad():
        ref = model.graphs()[1].module(*inputs.values())
    return out, ref.numpy()
