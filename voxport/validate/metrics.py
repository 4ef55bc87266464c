"""Audio and tensor parity metrics: how far an exported artifact's output is from the fp32 reference.

Three audio figures, because no single one answers "does it still sound the same":

* **Waveform SNR** is the strictest: it compares sample by sample, so it is only meaningful when the
  artifact produces exactly as many samples as the reference (same predicted durations). When the
  lengths differ it is ``None`` rather than a misleading number.
* **Log-mel distance after DTW** compares what a listener hears (a perceptual-ish spectrogram) and
  tolerates small timing changes: a quantized duration predictor that makes one phoneme a frame longer
  shifts every later sample, which ruins SNR but is inaudible. Dynamic time warping aligns the two
  spectrograms before differencing, so only spectral differences are counted.
* **Mel-cepstral distortion (MCD)** after DTW is the figure speech papers report, so recipes can use
  thresholds that mean something to people who know the literature.

Both spectral figures share one floor set relative to the *reference's* loudest log-mel cell (default
80 dB below it). Without a floor, digital silence in the reference (``log 0``) against a few LSBs of
noise in the artifact would produce differences of 100+ dB in every silent frame and swamp the speech.
The floor is taken from the reference only and applied to both signals, so the two spectrograms are
clipped at the same level and an artifact cannot change the floor by being louder or quieter.

The tensor figures (``max_abs_error``, ``tensor_snr_db``) are for per-graph comparisons of
intermediate outputs, where shapes must match exactly.

Non-finite values: a reference containing NaN/inf is a bug in the caller, so every function raises
``ValueError``. A *test* array with NaN/inf makes the element-wise figures return their worst value
(SNR ``-200.0`` dB, max-abs-error ``inf``) so that a threshold check fails instead of silently passing
(``nan < threshold`` is ``False``); the spectral figures raise ``ValueError`` because a spectrogram of
NaN audio has no meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import librosa
import numpy as np
from scipy.spatial.distance import cdist

#: SNR values are clamped to ``[-SNR_CAP_DB, SNR_CAP_DB]``: identical arrays would otherwise give
#: ``+inf`` and an all-zero reference against any error ``-inf``; both break JSON reports and averages.
SNR_CAP_DB = 200.0

#: STFT settings for 16-24 kHz speech: a 1024-sample window is 43-64 ms (resolves the harmonics of
#: a low voice), a 256-sample hop is 11-16 ms (about 63-94 frames per second), the usual TTS framing.
N_FFT = 1024
HOP_LENGTH = 256
WIN_LENGTH = 1024

#: Default floor of the spectral figures, in dB relative to the reference's log-mel peak.
DEFAULT_FLOOR_DB = -80.0

#: Smallest mel power taken to the log (-200 dB). Only matters for digital silence; the relative
#: floor above is what normally clips quiet cells, so this is set far below any realistic floor.
_AMIN_POWER = 1e-20

#: Converts differences of natural-log cepstra to dB: ``10 / ln 10``.
_NEPER_TO_DB = 10.0 / math.log(10.0)


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _as_array(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as float64; rejects empty input with a message that names the argument."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; parity metrics need at least one value")
    return arr


def _as_audio(x: np.ndarray, name: str) -> np.ndarray:
    """Validate a mono waveform: 1-D, non-empty, finite."""
    arr = _as_array(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D mono waveform, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf samples")
    return arr


def _check_sample_rate(sample_rate: int) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")


def _check_floor(floor_db: float) -> None:
    # A positive floor would lie above the peak and flatten everything to one value.
    if not floor_db <= 0.0:
        raise ValueError(f"floor_db must be <= 0 (dB relative to the reference peak), got {floor_db}")


# --------------------------------------------------------------------------------------------------
# Element-wise figures
# --------------------------------------------------------------------------------------------------


def _snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """SNR of equal-shaped float64 arrays, clamped to +-SNR_CAP_DB (the shared core of both SNRs)."""
    if not np.all(np.isfinite(reference)):
        raise ValueError("reference contains NaN or inf values")
    if not np.all(np.isfinite(test)):
        return -SNR_CAP_DB
    signal = float(np.sum(reference * reference))
    noise = float(np.sum((reference - test) ** 2))
    if noise == 0.0:
        return SNR_CAP_DB  # identical, including both all-zero
    if signal == 0.0:
        return -SNR_CAP_DB  # nothing to preserve, yet something is there: worst possible
    snr = 10.0 * math.log10(signal / noise)
    return float(min(max(snr, -SNR_CAP_DB), SNR_CAP_DB))


def waveform_snr_db(reference: np.ndarray, test: np.ndarray) -> float | None:
    """Sample-by-sample SNR in dB, ``10 log10(sum(ref^2) / sum((ref - test)^2))``.

    Returns ``None`` when the lengths differ: that happens whenever the artifact predicts even one
    different duration, and a sample-wise comparison of misaligned audio says nothing useful (use
    ``logmel_dtw_db`` instead). Clamped to ``[-200, 200]`` dB so identical or all-zero inputs give a
    finite number.
    """
    ref = _as_audio(reference, "reference")
    tst = _as_array(test, "test")
    if tst.ndim != 1:
        raise ValueError(f"test must be a 1-D mono waveform, got shape {tst.shape}")
    if ref.shape != tst.shape:
        return None
    return _snr_db(ref, tst)


def tensor_snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """SNR in dB between equal-shaped tensors of any rank (per-graph intermediate outputs).

    Same formula and ``[-200, 200]`` dB clamp as ``waveform_snr_db``; unlike audio, a shape mismatch
    here is a wiring bug, so it raises ``ValueError`` instead of returning ``None``.
    """
    ref = _as_array(reference, "reference")
    tst = _as_array(test, "test")
    if ref.shape != tst.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs test {tst.shape}")
    return _snr_db(ref, tst)


def max_abs_error(reference: np.ndarray, test: np.ndarray) -> float:
    """Largest element-wise absolute difference between equal-shaped tensors.

    Catches a single badly quantized channel that an average (SNR) would dilute. Returns ``inf`` if
    the test tensor holds NaN/inf, so a tolerance check fails.
    """
    ref = _as_array(reference, "reference")
    tst = _as_array(test, "test")
    if ref.shape != tst.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs test {tst.shape}")
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference contains NaN or inf values")
    if not np.all(np.isfinite(tst)):
        return math.inf
    return float(np.max(np.abs(ref - tst)))


# --------------------------------------------------------------------------------------------------
# Spectral figures
# --------------------------------------------------------------------------------------------------


def _mel_power(audio: np.ndarray, sample_rate: int, n_mels: int) -> np.ndarray:
    """Mel power spectrogram, shape ``(n_mels, frames)``; audio shorter than one window is zero-padded."""
    if audio.shape[0] < N_FFT:
        # librosa refuses n_fft > len(y); a few trailing zeros only add silent (floored) cells.
        audio = np.pad(audio, (0, N_FFT - audio.shape[0]))
    return librosa.feature.melspectrogram(
        y=audio,
        sr=sample_rate,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        win_length=WIN_LENGTH,
        window="hann",
        center=True,
        power=2.0,
        n_mels=n_mels,
        fmin=0.0,
        fmax=sample_rate / 2.0,
    )


def logmel(
    audio: np.ndarray,
    sample_rate: int,
    *,
    n_mels: int = 80,
    floor_db: float = DEFAULT_FLOOR_DB,
    ref_peak: float | None = None,
) -> np.ndarray:
    """Log-mel spectrogram in dB (``10 log10`` of mel power), shape ``(frames, n_mels)``.

    Cells are clipped from below at ``ref_peak + floor_db``. ``ref_peak`` is the maximum (in dB) of
    the *reference's* log-mel; pass it when computing the test signal's log-mel so both share one
    floor (see the module docstring for why). When ``None`` the signal's own peak is used, which is
    what you want for the reference itself. Silence below the floor then contributes nothing, so a
    metric measures the speech rather than how the two signals' noise floors differ.
    """
    _check_sample_rate(sample_rate)
    _check_floor(floor_db)
    y = _as_audio(audio, "audio")
    power = _mel_power(y, sample_rate, n_mels)
    db = 10.0 * np.log10(np.maximum(power, _AMIN_POWER))
    peak = float(db.max()) if ref_peak is None else float(ref_peak)
    return np.maximum(db, peak + floor_db).T


def _shared_floor_logmels(
    reference: np.ndarray, test: np.ndarray, sample_rate: int, floor_db: float
) -> tuple[np.ndarray, np.ndarray]:
    """Log-mels of both signals, floored relative to the reference's peak."""
    ref = _as_audio(reference, "reference")
    tst = _as_audio(test, "test")
    ref_lm = logmel(ref, sample_rate, floor_db=floor_db)
    # The floor lies below the peak (floor_db <= 0), so the floored maximum is the true peak.
    tst_lm = logmel(tst, sample_rate, floor_db=floor_db, ref_peak=float(ref_lm.max()))
    return ref_lm, tst_lm


def _mean_cost_along_dtw_path(cost: np.ndarray) -> float:
    """Mean of a frame-pair cost matrix along its minimum-cost DTW path.

    DTW uses librosa's default steps (diagonal, horizontal, vertical), unweighted, with both ends
    anchored: the alignment must cover both sentences completely, so dropped or extra audio at
    either end is counted. The average (not the sum) is reported, so the figure is per frame and
    comparable across sentence lengths. Cost is O(N*M): about 0.2 M cells for two 5 s sentences.
    """
    _, path = librosa.sequence.dtw(C=cost, backtrack=True)
    return float(np.mean(cost[path[:, 0], path[:, 1]]))


def logmel_dtw_db(
    reference: np.ndarray, test: np.ndarray, sample_rate: int, *, floor_db: float = DEFAULT_FLOOR_DB
) -> float:
    """Mean absolute log-mel difference in dB between DTW-aligned frames.

    The frame-pair cost is the mean over mel bands of ``|ref_dB - test_dB|``, so 1.0 means "on
    average one dB off in every band". DTW first aligns the two spectrograms because exported
    duration predictors often round a phoneme one frame differently; that shifts all later audio
    without changing how it sounds, and a frame-by-frame comparison would report it as a large
    error. Both spectrograms are floored at ``floor_db`` below the reference's peak.

    The price of DTW: it may also pair a frame with a neighbour that happens to match better, so
    level differences along a rising or falling envelope are partly absorbed (a uniform +6 dB gain
    reads as roughly 4-5 dB on speech). When both signals have the same length, ``waveform_snr_db``
    has no such blind spot.
    """
    ref_lm, tst_lm = _shared_floor_logmels(reference, test, sample_rate, floor_db)
    cost = cdist(ref_lm, tst_lm, metric="cityblock") / ref_lm.shape[1]
    return _mean_cost_along_dtw_path(cost)


def _power_cepstrum(logmel_db: np.ndarray, n_coeffs: int) -> np.ndarray:
    """Two-sided real cepstrum of ``ln(mel power)``, shape ``(n_coeffs, frames)`` (see ``mcd_db``)."""
    n_mels = logmel_db.shape[1]
    ln_power = logmel_db.T * (math.log(10.0) / 10.0)
    ortho = librosa.feature.mfcc(S=ln_power, n_mfcc=n_coeffs, dct_type=2, norm="ortho")
    return ortho / math.sqrt(2.0 * n_mels)


def mcd_db(reference: np.ndarray, test: np.ndarray, sample_rate: int, *, n_mfcc: int = 13) -> float:
    """Mel-cepstral distortion in dB between DTW-aligned frames.

    Per aligned frame pair: ``(10 / ln 10) * sqrt(2 * sum_{d=1}^{D-1} (c_d - c'_d)^2)``, averaged
    along the DTW path; ``c_0`` (overall energy) is excluded as in the standard definition, so a pure
    gain change does not count.

    Cepstra used: the real (even, two-sided) cepstrum of the natural-log mel *power* spectrum, i.e.
    ``ln P_k = c_0 + 2 sum_m c_m cos(pi m (k + 1/2) / N)`` over the ``N`` mel bands, which is the
    orthonormal DCT-II of ``ln P`` divided by ``sqrt(2 N)``; the first ``n_mfcc`` coefficients are
    kept. The mel bands play the role of the warped frequency axis. The log-mel is the same floored
    80-band one as in ``logmel_dtw_db`` (floor 80 dB below the reference peak, shared by both
    signals), so silence does not dominate here either.

    Why this scaling: the SPTK mel-cepstrum the formula was written for is one-sided and taken from
    the log *amplitude* envelope, ``ln|H| = c_0 + sum_m c_m cos(m w)``; since ``ln P = 2 ln|H|`` its
    ``c_m`` equal the two-sided power-cepstrum coefficients above. With either, Parseval makes
    ``(10 / ln 10) * sqrt(2 * sum (dc_m)^2)`` the RMS difference, in dB, between the two cepstrally
    smoothed envelopes (mean level removed), so figures are on the usual MCD scale and do not depend
    on ``n_mels``. Plain librosa MFCCs (dB units, orthonormal DCT) fed into the formula would instead
    come out ``sqrt(2 N)`` times larger, a common source of incomparable MCD numbers.
    """
    if n_mfcc < 2:
        raise ValueError(f"n_mfcc must be >= 2 (c0 is excluded), got {n_mfcc}")
    ref_lm, tst_lm = _shared_floor_logmels(reference, test, sample_rate, DEFAULT_FLOOR_DB)
    if n_mfcc > ref_lm.shape[1]:
        raise ValueError(f"n_mfcc must be <= the number of mel bands ({ref_lm.shape[1]}), got {n_mfcc}")
    ref_cep = _power_cepstrum(ref_lm, n_mfcc)
    tst_cep = _power_cepstrum(tst_lm, n_mfcc)
    # Euclidean distance over c_1..c_{D-1} is sqrt(sum (c_d - c'_d)^2); scale it into MCD per frame.
    cost = _NEPER_TO_DB * math.sqrt(2.0) * cdist(ref_cep[1:].T, tst_cep[1:].T, metric="euclidean")
    return _mean_cost_along_dtw_path(cost)


# --------------------------------------------------------------------------------------------------
# Durations and the per-sentence summary
# --------------------------------------------------------------------------------------------------


def duration_agreement(reference: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """Compare per-token durations (in frames) from the reference and the artifact.

    Returns ``(exact_share, length_ratio)``: the share of tokens whose rounded durations are equal,
    and ``sum(test) / sum(reference)`` of the rounded durations (the frames actually generated).
    The first catches a duration predictor that drifts token by token; the second whether the
    sentence as a whole got faster or slower. Both arrays must be 1-D with one entry per token.
    A reference totalling zero frames gives a ratio of 1.0 if the test is also zero, else ``inf``.
    """
    ref = _as_array(reference, "reference durations")
    tst = _as_array(test, "test durations")
    if ref.ndim != 1 or tst.ndim != 1:
        raise ValueError(f"durations must be 1-D (one per token), got shapes {ref.shape} and {tst.shape}")
    if ref.shape[0] != tst.shape[0]:
        raise ValueError(
            f"token counts differ: reference has {ref.shape[0]} tokens, test has {tst.shape[0]}; "
            "durations can only be compared for the same token sequence"
        )
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(tst))):
        raise ValueError("durations contain NaN or inf")
    ref_frames = np.rint(ref)
    tst_frames = np.rint(tst)
    exact_share = float(np.mean(ref_frames == tst_frames))
    ref_total = float(ref_frames.sum())
    tst_total = float(tst_frames.sum())
    if ref_total == 0.0:
        return exact_share, 1.0 if tst_total == 0.0 else math.inf
    return exact_share, tst_total / ref_total


@dataclass(frozen=True)
class AudioParity:
    """Parity figures for one sentence rendered by one artifact, against the fp32 reference.

    ``snr_db`` is ``None`` when the artifact produced a different number of samples.
    """

    snr_db: float | None
    logmel_dtw_db: float
    mcd_db: float


def compare_audio(reference: np.ndarray, test: np.ndarray, sample_rate: int) -> AudioParity:
    """All audio parity figures for one sentence, with default settings."""
    return AudioParity(
        snr_db=waveform_snr_db(reference, test),
        logmel_dtw_db=logmel_dtw_db(reference, test, sample_rate),
        mcd_db=mcd_db(reference, test, sample_rate),
    )
