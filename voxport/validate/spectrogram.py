"""Log-mel spectrogram pictures for the HTML report, as PNG bytes made with numpy and zlib alone.

matplotlib is not a dependency (it would be the heaviest package in the venv for three pictures per
sentence), so this module carries a tiny PNG encoder (8-bit RGB, no interlace, filter 0) and two
colormaps of its own: a dark-to-bright sequential one for levels and a blue-white-red diverging one for
differences, where white means "no change" and the two signs stay distinguishable in greyscale print.

The spectrograms come from `voxport.validate.metrics.logmel`, the same features the parity figures are
computed from, with the *reference's* peak and floor applied to both signals: a picture then shows what
the numbers measured, and the two level pictures share one colour scale.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from voxport.validate.metrics import DEFAULT_FLOOR_DB, logmel

#: Picture limits: the report stays a few MB even with many sentences and artifacts.
MAX_WIDTH = 800
#: Pixels per time frame at most; short sentences are stretched up to this, long ones squeezed.
MAX_PX_PER_FRAME = 4.0
#: Pixels per mel band (80 bands → 160 px high).
PX_PER_MEL = 2
#: Colour range of the difference picture, in dB either side of zero. Fixed (not per picture) so the
#: same colour means the same error in every sentence and every artifact.
DIFF_RANGE_DB = 20.0

# Anchor colours (position, r, g, b); interpolated linearly. Chosen for monotonically rising lightness.
_SEQUENTIAL = np.array(
    [
        [0.00, 8, 6, 30],
        [0.20, 45, 17, 96],
        [0.40, 114, 31, 129],
        [0.60, 190, 55, 100],
        [0.80, 245, 125, 60],
        [1.00, 252, 245, 170],
    ],
    dtype=np.float64,
)
_DIVERGING = np.array(
    [
        [0.00, 25, 60, 140],
        [0.25, 95, 150, 205],
        [0.50, 250, 250, 250],
        [0.75, 225, 120, 90],
        [1.00, 150, 20, 30],
    ],
    dtype=np.float64,
)


def _apply_colormap(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to uint8 RGB, shape values.shape + (3,)."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    channels = [np.interp(v, anchors[:, 0], anchors[:, c]) for c in (1, 2, 3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (height, width, 3) uint8 image.

    Filter type 0 on every row: spectrograms are noisy enough that the adaptive filters gain little,
    and zlib at level 9 keeps an 800×160 picture around 100 kB or less.
    """
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"expected a non-empty (height, width, 3) image, got shape {img.shape}")
    height, width = img.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), img.reshape(height, width * 3)], axis=1)
    # 8-bit RGB, deflate, filter method 0, no interlace
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )


def _to_picture(frames_by_mel: np.ndarray, width: int, anchors: np.ndarray) -> np.ndarray:
    """(frames, n_mels) values in [0, 1] → RGB picture, low frequencies at the bottom, time resampled
    to `width` columns by nearest frame (no smoothing, so a one-frame glitch stays visible)."""
    frames, n_mels = frames_by_mel.shape
    cols = np.minimum((np.arange(width) * frames / width).astype(np.int64), frames - 1)
    grid = frames_by_mel[cols].T[::-1]  # (n_mels, width), top row = highest band
    grid = np.repeat(grid, PX_PER_MEL, axis=0)
    return _apply_colormap(grid, anchors)


@dataclass(frozen=True)
class SpectrogramSet:
    """PNG pictures for one sentence: reference, exported, and exported − reference."""

    reference_png: bytes
    test_png: bytes
    diff_png: bytes
    #: dB range of the level pictures: [floor, peak] of the reference
    level_range_db: tuple[float, float]
    #: frames compared in the difference (the shorter signal's length when lengths differ)
    diff_frames: int
    reference_frames: int
    test_frames: int


def _widths(*frame_counts: int) -> list[int]:
    """One time scale for all pictures of a sentence, so equal times line up vertically."""
    px_per_frame = min(MAX_PX_PER_FRAME, MAX_WIDTH / max(frame_counts))
    return [max(1, min(MAX_WIDTH, round(n * px_per_frame))) for n in frame_counts]


def spectrograms(
    reference: np.ndarray, test: np.ndarray, sample_rate: int, *, floor_db: float = DEFAULT_FLOOR_DB
) -> SpectrogramSet:
    """Level pictures of both signals on the reference's scale, and their difference.

    The difference is taken frame by frame over the common length without alignment: a picture of
    where the artifact differs in time is what a reader needs to find a drifting duration, which the
    DTW-aligned figure deliberately forgives.
    """
    ref_db = logmel(reference, sample_rate, floor_db=floor_db)
    peak = float(ref_db.max())
    test_db = logmel(test, sample_rate, floor_db=floor_db, ref_peak=peak)
    low = peak + floor_db
    common = min(ref_db.shape[0], test_db.shape[0])
    diff = test_db[:common] - ref_db[:common]
    w_ref, w_test, w_diff = _widths(ref_db.shape[0], test_db.shape[0], common)
    return SpectrogramSet(
        reference_png=encode_png(_to_picture((ref_db - low) / -floor_db, w_ref, _SEQUENTIAL)),
        test_png=encode_png(_to_picture(np.minimum((test_db - low) / -floor_db, 1.0), w_test, _SEQUENTIAL)),
        diff_png=encode_png(_to_picture(0.5 + diff / (2 * DIFF_RANGE_DB), w_diff, _DIVERGING)),
        level_range_db=(low, peak),
        diff_frames=common,
        reference_frames=int(ref_db.shape[0]),
        test_frames=int(test_db.shape[0]),
    )
