"""Audio and tensor parity metrics on deterministic synthetic signals with known degradations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxport.validate.metrics import (
    SNR_CAP_DB,
    AudioParity,
    compare_audio,
    duration_agreement,
    logmel,
    logmel_dtw_db,
    max_abs_error,
    mcd_db,
    tensor_snr_db,
    waveform_snr_db,
)

SR = 22050


def speech_like(
    seconds: float = 2.0,
    *,
    f0_hz: float = 120.0,
    syllable_hz: float = 3.0,
    gaps: tuple[tuple[float, float], ...] = ((0.55, 0.75), (1.35, 1.5)),
    sr: int = SR,
    tempo: float = 1.0,
) -> np.ndarray:
    """Voiced-speech stand-in: harmonics up to ~8 kHz with 1/k roll-off, a slowly wandering f0,
    a syllable-rate amplitude envelope, and stretches of digital silence (pauses).

    ``tempo`` < 1 renders the same utterance more slowly (``seconds / tempo`` long, same pitch), the
    way a duration predictor that lengthens every phoneme would.
    """
    t = np.arange(int(seconds / tempo * sr)) / sr * tempo
    f0 = f0_hz * (1.0 + 0.15 * np.sin(2 * np.pi * 0.7 * t) + 0.05 * np.sin(2 * np.pi * 2.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr  # pitch follows real time: slower speech, same voice
    n_harmonics = int(8000 // (f0_hz * 1.2))
    x = sum(np.sin(k * phase) / k for k in range(1, n_harmonics + 1))
    envelope = 0.2 + 0.8 * np.sin(np.pi * syllable_hz * t) ** 2
    x = x * envelope
    for start, stop in gaps:
        x[int(start * sr) : int(stop * sr)] = 0.0
    return 0.5 * x / np.max(np.abs(x))


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at the given SNR relative to the signal's mean power (not normalized per draw)."""
    noise_power = np.mean(x**2) / 10 ** (snr_db / 10)
    return x + rng.standard_normal(x.shape[0]) * math.sqrt(noise_power)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return speech_like()


# --------------------------------------------------------------------------------------------------
# Audio metrics
# --------------------------------------------------------------------------------------------------


def test_more_noise_is_worse_on_every_metric(reference: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    results = {snr: compare_audio(reference, add_noise(reference, snr, rng), SR) for snr in (40, 30, 20)}
    for target, parity in results.items():
        assert parity.snr_db is not None
        assert abs(parity.snr_db - target) < 0.5, (target, parity)
    p40, p30, p20 = results[40], results[30], results[20]
    assert p40.snr_db > p30.snr_db > p20.snr_db
    assert 0.0 < p40.logmel_dtw_db < p30.logmel_dtw_db < p20.logmel_dtw_db
    assert 0.0 < p40.mcd_db < p30.mcd_db < p20.mcd_db


def test_identical_signals_are_perfect(reference: np.ndarray) -> None:
    parity = compare_audio(reference, reference.copy(), SR)
    assert parity.snr_db == SNR_CAP_DB == 200.0
    assert parity.logmel_dtw_db == pytest.approx(0.0, abs=1e-9)
    assert parity.mcd_db == pytest.approx(0.0, abs=1e-9)


def test_float32_copy_is_near_perfect(reference: np.ndarray) -> None:
    parity = compare_audio(reference, reference.astype(np.float32), SR)
    assert parity.snr_db is not None and parity.snr_db > 120.0
    assert parity.logmel_dtw_db < 1e-3
    assert parity.mcd_db < 1e-3


@pytest.mark.parametrize("warp", ["insert_50ms_silence", "3_percent_slower"])
def test_dtw_forgives_timing_but_not_content(reference: np.ndarray, warp: str) -> None:
    if warp == "insert_50ms_silence":
        mid = reference.shape[0] // 2  # mid-syllable, not inside a pause
        warped = np.concatenate([reference[:mid], np.zeros(int(0.05 * SR)), reference[mid:]])
    else:
        warped = speech_like(tempo=1 / 1.03)  # same sentence, 3 % longer, same pitch
    unrelated = speech_like(f0_hz=190.0, syllable_hz=4.4, gaps=((0.2, 0.4), (1.0, 1.3)))

    assert waveform_snr_db(reference, warped) is None  # lengths differ: SNR cannot say anything
    warped_lm = logmel_dtw_db(reference, warped, SR)
    unrelated_lm = logmel_dtw_db(reference, unrelated, SR)
    assert warped_lm < 0.25 * unrelated_lm, (warped_lm, unrelated_lm)
    warped_mcd = mcd_db(reference, warped, SR)
    unrelated_mcd = mcd_db(reference, unrelated, SR)
    assert warped_mcd < 0.25 * unrelated_mcd, (warped_mcd, unrelated_mcd)


def test_floor_ignores_noise_below_it_but_not_above_it() -> None:
    # One second of speech, then one second of digital silence.
    speech = speech_like(1.0, gaps=())
    ref = np.concatenate([speech, np.zeros(SR)])
    peak = np.max(np.abs(ref))
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(SR)

    def with_noise_in_silence(level_db: float) -> np.ndarray:
        out = ref.copy()
        out[SR:] = noise * peak * 10 ** (level_db / 20)
        return out

    exact = logmel_dtw_db(ref, ref.copy(), SR)
    below = logmel_dtw_db(ref, with_noise_in_silence(-100.0), SR)
    above = logmel_dtw_db(ref, with_noise_in_silence(-30.0), SR)
    assert exact == pytest.approx(0.0, abs=1e-9)
    assert below == pytest.approx(exact, abs=0.01)
    assert above > 5.0
    # The floor is what hides the -100 dB noise: push it far down and the noise counts.
    assert logmel_dtw_db(ref, with_noise_in_silence(-100.0), SR, floor_db=-250.0) > 20.0


def test_floor_is_taken_from_the_reference_peak(reference: np.ndarray) -> None:
    ref_lm = logmel(reference, SR)
    assert ref_lm.shape[1] == 80
    peak = float(ref_lm.max())
    assert ref_lm.min() == pytest.approx(peak - 80.0)  # the pauses sit exactly on the floor
    quiet_lm = logmel(reference * 1e-3, SR, ref_peak=peak)  # 60 dB quieter, same floor
    assert quiet_lm.min() == pytest.approx(peak - 80.0)
    assert quiet_lm.max() == pytest.approx(peak - 60.0, abs=1e-6)


def test_gain_change_moves_logmel_but_not_mcd(reference: np.ndarray) -> None:
    # c0 (energy) is excluded from MCD, so a pure gain change is free there. A -50 dB noise bed keeps
    # every cell above the floor; otherwise floored cells would stay put and change the shape.
    rng = np.random.default_rng(0)
    ref = reference + rng.standard_normal(reference.shape[0]) * 10 ** (-50 / 20)
    louder = ref * 2.0
    # Every cell is exactly 6.02 dB higher, but DTW may slide along a rising or falling syllable to
    # pair a frame with a quieter neighbour, so the figure is at most that (documented limitation).
    assert 2.0 < logmel_dtw_db(ref, louder, SR) <= 20 * math.log10(2.0) + 1e-9
    assert mcd_db(ref, louder, SR) == pytest.approx(0.0, abs=1e-9)


def test_mcd_equals_rms_db_difference_of_the_envelope() -> None:
    # The documented scale: a smooth +-A dB tilt across the mel bands (the first cepstral basis
    # function) has an RMS of A / sqrt(2) dB, and that is what the MCD formula must report.
    from voxport.validate.metrics import _power_cepstrum

    n_mels, amplitude_db = 80, 6.0
    k = np.arange(n_mels)
    base = np.full((1, n_mels), -20.0)
    tilted = base + amplitude_db * np.cos(np.pi * (k + 0.5) / n_mels)
    dc = _power_cepstrum(tilted, 13)[1:, 0] - _power_cepstrum(base, 13)[1:, 0]
    mcd = 10 / math.log(10) * math.sqrt(2 * np.sum(dc**2))
    assert mcd == pytest.approx(amplitude_db / math.sqrt(2), rel=1e-9)


@pytest.mark.parametrize("sr", [16000, 22050, 24000])
def test_common_speech_rates_work(sr: int) -> None:
    ref = speech_like(1.0, sr=sr, gaps=((0.4, 0.5),))
    rng = np.random.default_rng(0)
    parity = compare_audio(ref, add_noise(ref, 30.0, rng), sr)
    assert parity.snr_db == pytest.approx(30.0, abs=0.5)
    assert parity.logmel_dtw_db > 0.0 and parity.mcd_db > 0.0


def test_audio_shorter_than_one_window() -> None:
    ref = np.sin(np.arange(100) * 0.3)
    assert logmel(ref, SR).shape == (5, 80)  # padded to one n_fft window, centered frames
    parity = compare_audio(ref, ref * 0.9, SR)
    assert parity.snr_db == pytest.approx(20.0)
    assert math.isfinite(parity.logmel_dtw_db) and math.isfinite(parity.mcd_db)
    one_sample = compare_audio(np.array([0.5]), np.array([0.5, 0.1]), SR)
    assert one_sample.snr_db is None
    assert math.isfinite(one_sample.logmel_dtw_db)


# --------------------------------------------------------------------------------------------------
# Degenerate inputs
# --------------------------------------------------------------------------------------------------


def test_all_zero_reference_snr_is_well_defined() -> None:
    zeros = np.zeros(1000)
    assert waveform_snr_db(zeros, zeros.copy()) == 200.0
    assert waveform_snr_db(zeros, np.full(1000, 1e-6)) == -200.0
    assert tensor_snr_db(np.zeros((2, 3)), np.zeros((2, 3))) == 200.0
    assert tensor_snr_db(np.zeros((2, 3)), np.ones((2, 3))) == -200.0
    silent = compare_audio(zeros, zeros.copy(), SR)
    assert silent == AudioParity(snr_db=200.0, logmel_dtw_db=0.0, mcd_db=0.0)


def test_snr_values_are_exact_and_capped() -> None:
    ref = np.array([1.0, -1.0, 1.0, -1.0])
    assert waveform_snr_db(ref, ref * 0.9) == pytest.approx(20.0)  # error is 10 % of the signal
    assert tensor_snr_db(ref.reshape(2, 2), (ref * 0.99).reshape(2, 2)) == pytest.approx(40.0)
    assert waveform_snr_db(ref, ref + 1e-12) == 200.0  # 240 dB, capped
    assert waveform_snr_db(ref, -1e12 * ref) == -200.0


def test_non_finite_test_output_scores_worst_not_nan() -> None:
    ref = np.ones(8)
    broken = ref.copy()
    broken[3] = np.nan
    assert waveform_snr_db(ref, broken) == -200.0
    assert tensor_snr_db(ref, broken) == -200.0
    assert max_abs_error(ref, broken) == math.inf
    with pytest.raises(ValueError, match="test contains NaN or inf"):
        logmel_dtw_db(np.ones(2048), np.full(2048, np.inf), SR)
    with pytest.raises(ValueError, match="reference contains NaN or inf"):
        tensor_snr_db(broken, ref)


@pytest.mark.parametrize(
    "call",
    [
        lambda: waveform_snr_db(np.array([]), np.array([])),
        lambda: tensor_snr_db(np.zeros((0, 3)), np.zeros((0, 3))),
        lambda: max_abs_error(np.array([]), np.array([])),
        lambda: logmel(np.array([]), SR),
        lambda: logmel_dtw_db(np.ones(100), np.array([]), SR),
        lambda: mcd_db(np.array([]), np.ones(100), SR),
        lambda: compare_audio(np.array([]), np.array([]), SR),
        lambda: duration_agreement(np.array([]), np.array([])),
    ],
)
def test_empty_input_is_rejected(call) -> None:
    with pytest.raises(ValueError, match="is empty"):
        call()


def test_shape_and_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"shape mismatch: reference \(2, 3\) vs test \(3, 2\)"):
        max_abs_error(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="shape mismatch"):
        tensor_snr_db(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match="1-D mono waveform"):
        compare_audio(np.zeros((2, 2048)), np.zeros((2, 2048)), SR)
    with pytest.raises(ValueError, match="sample_rate must be positive"):
        logmel(np.ones(2048), 0)
    with pytest.raises(ValueError, match="floor_db must be <= 0"):
        logmel_dtw_db(np.ones(2048), np.ones(2048), SR, floor_db=10.0)
    with pytest.raises(ValueError, match="n_mfcc must be >= 2"):
        mcd_db(np.ones(2048), np.ones(2048), SR, n_mfcc=1)


# --------------------------------------------------------------------------------------------------
# Tensor figures and durations
# --------------------------------------------------------------------------------------------------


def test_max_abs_error_finds_the_worst_element() -> None:
    ref = np.zeros((3, 4), dtype=np.float32)
    test = ref.copy()
    test[2, 1] = -0.25
    test[0, 0] = 0.125
    assert max_abs_error(ref, test) == 0.25
    assert max_abs_error(ref, ref) == 0.0


def test_duration_agreement_exact_values() -> None:
    ref = np.array([3, 5, 2, 7, 1])
    test = np.array([3, 6, 2, 7, 0])  # two tokens off, total 18 vs 18
    assert duration_agreement(ref, test) == (0.6, 1.0)
    assert duration_agreement(ref, ref) == (1.0, 1.0)
    longer = np.array([4, 6, 3, 8, 2])  # every token one frame longer: 23 / 18
    share, ratio = duration_agreement(ref, longer)
    assert share == 0.0
    assert ratio == pytest.approx(23 / 18)
    # Predicted (float) durations are compared as the rounded frame counts they become.
    assert duration_agreement(ref, np.array([3.2, 4.6, 2.4, 6.9, 1.49])) == (1.0, 1.0)


def test_duration_agreement_rejects_different_token_counts() -> None:
    with pytest.raises(ValueError, match="token counts differ: reference has 3 tokens, test has 4"):
        duration_agreement(np.array([1, 2, 3]), np.array([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="durations must be 1-D"):
        duration_agreement(np.ones((2, 2)), np.ones((2, 2)))
