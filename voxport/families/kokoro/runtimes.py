"""What kokoro-onnx and sherpa-onnx need beside a Kokoro one-graph ONNX to load it and speak.

The graph has the published file's interface (`tokens` int64 [1, T], `style` f32 [1, 256], `speed` f32 [1]
-> `audio` f32 [N] at 24 kHz; T counts the two 0 pads). Both runtimes feed it `[0, *ids, 0]` and the speed
as given; they differ in the style row (measured by feeding each a graph that echoes its inputs,
tests/test_kokoro_runtimes.py):

- kokoro-onnx 0.6.1 (`Kokoro(model_path, voices_path)`): voices are `np.load(voices_path)`, an `.npz` with
  one float32 [N, 1, 256] table per voice name (a [N, 256] table would give a rank-1 style and fail), row
  n - 1 for n ids (`Kokoro._style_for`), as hexgrad's KPipeline does. It needs nothing in the ONNX: its
  vocabulary is, in order, an explicit `vocab_config`, else the graph's metadata `kokoro_config` (a JSON
  config with a `vocab`, `kokoro_onnx/session.py: embedded_vocab`), else the config.json it bundles (Kokoro
  v1.0's). `kokoro_onnx_metadata` stamps voxport's config so an export carries its own vocabulary.
  `create(..., trim=True)` (the default) trims leading and trailing silence.
- sherpa-onnx 2.0.1 (`OfflineTtsKokoroModelConfig(model, voices, tokens)`): metadata_props read by
  `sherpa-onnx/csrc/offline-tts-kokoro-model.cc` (`Init`): `sample_rate`, `n_speakers` and `style_dim`
  ("rows,1,256"; dims 0 and 2 used, dim 1 must be 1) are required (missing one aborts the process);
  `version` (default 1), `voice` (default en-us) and `has_espeak` are read but optional since 2.0;
  `speaker_names` is printed with `debug`; `model_type` is not read (the config field chooses the
  engine). `sherpa_metadata` writes the keys sherpa's own `scripts/kokoro/v1.0/add_meta_data.py` writes.
  `voices.bin` is every voice's float32 [rows, 1, 256] table one after the other in speaker-id order, no
  header (`scripts/kokoro/v1.0/generate_voices_bin.py`; `Init` checks size == n_speakers * rows * 256
  floats); `tokens.txt` is `symbol id` lines from the config's vocab (`generate_tokens.py`; the space
  space symbol gives "  16", two spaces). Style: row n for n ids (`Run`: `len = x_len - 2`), one later than
  kokoro-onnx, and n >= rows aborts the process. Since 2.0.0 sherpa-onnx has no espeak-ng: `data_dir`,
  `lang` and `dict_dir` are ignored (it warns); text goes in as `GenerationConfig.phoneme_codepoints`,
  one list per sentence (each run on its own, the audio concatenated), mapped through tokens.txt.
  `GenerationConfig.silence_scale` (default 0.2) shortens pauses: 1.0 keeps the graph's audio.
  sherpa-onnx 2.0.1 embeds ONNX Runtime 1.28.2: on the published *int8* graph its audio differs from
  ONNX Runtime 1.32's for the same inputs (one 600-sample frame shorter on a test sentence); ONNX Runtime
  1.28.0's Python package reproduces sherpa-onnx's audio bit for bit.

For sherpa-onnx before 2.0 (its espeak-ng frontend), `espeak_data_dir` finds an espeak-ng-data folder
installed from PyPI (espeakng-loader's, else piper-tts's) for `data_dir`.

The metadata is a pure function of the voices' names and shape, the vocabulary and the sample rate, so
the family puts it on its graph spec and the exporter stamps it while writing the ONNX;
`write_kokoro_onnx_files` / `write_sherpa_files` write the side files, atomically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxport.errors import BadInput
from voxport.families.kokoro.source import SAMPLE_RATE, STYLE_WIDTH, check_voices
from voxport.io import atomic_path, atomic_write_text

#: beside the exported graph (the same for every precision, so shared by the artifacts of one folder)
KOKORO_ONNX_VOICES = "voices.npz"
SHERPA_VOICES = "voices.bin"
SHERPA_TOKENS = "tokens.txt"
#: the metadata key kokoro-onnx reads its vocabulary from (kokoro_onnx/session.py CONFIG_KEY)
KOKORO_ONNX_CONFIG_KEY = "kokoro_config"


def kokoro_onnx_style_row(n_ids: int) -> int:
    """The voice row kokoro-onnx (and hexgrad's KPipeline) use for `n_ids` ids: n - 1."""
    return n_ids - 1


def sherpa_style_row(n_ids: int) -> int:
    """The voice row sherpa-onnx uses for `n_ids` ids: n (it must stay below the table's rows)."""
    return n_ids


def kokoro_onnx_metadata(config: Mapping[str, Any]) -> dict[str, str]:
    """`kokoro_config`: the model's config.json, so kokoro-onnx takes the vocabulary from the graph."""
    if not isinstance(config.get("vocab"), Mapping):
        raise BadInput("a Kokoro config needs a `vocab` mapping of phoneme symbols to ids")
    return {KOKORO_ONNX_CONFIG_KEY: json.dumps(config, ensure_ascii=False, sort_keys=True)}


def sherpa_metadata(
    voice_names: Sequence[str],
    rows: int,
    *,
    sample_rate: int = SAMPLE_RATE,
    style_width: int = STYLE_WIDTH,
    language: str = "en-us",
) -> dict[str, str]:
    """The metadata_props sherpa-onnx reads for a Kokoro graph (see the module docstring), for voices
    `voice_names` (speaker ids in this order) of `rows` style rows each. `language` is the espeak voice
    sherpa-onnx before 2.0 phonemizes with when given no language."""
    names = [str(n) for n in voice_names]
    if not names or any("," in n or "->" in n or not n for n in names):
        raise BadInput(f"voice names {names} cannot be listed in sherpa-onnx's metadata (empty, ',' or '->')")
    if rows < 1:
        raise BadInput(f"a Kokoro voice needs at least one style row, not {rows}")
    return {
        "model_type": "kokoro",
        "language": "multi-lang",
        "has_espeak": "1",
        "sample_rate": str(int(sample_rate)),
        # 2: a multilingual Kokoro (v1.0 and later); before 2.0 sherpa-onnx then wants a lexicon or a lang
        "version": "2",
        "voice": language,
        "style_dim": f"{int(rows)},1,{int(style_width)}",
        "n_speakers": str(len(names)),
        "id2speaker": ",".join(f"{i}->{n}" for i, n in enumerate(names)),
        "speaker2id": ",".join(f"{n}->{i}" for i, n in enumerate(names)),
        "speaker_names": ",".join(names),
        "comment": "Kokoro (StyleTTS 2 + iSTFTNet), exported by voxport",
    }


def tokens_text(vocab: Mapping[str, int]) -> str:
    """sherpa-onnx's tokens.txt: `symbol id` lines in vocabulary order."""
    lines = []
    for symbol, index in vocab.items():
        if len(symbol) != 1 or (symbol.isspace() and symbol != " "):
            raise BadInput(
                f"phoneme {symbol!r} cannot be a line of sherpa-onnx's tokens.txt (one char, not a newline)"
            )
        lines.append(f"{symbol} {int(index)}\n")
    return "".join(lines)


def _same_rows(voices: Mapping[str, np.ndarray]) -> int:
    rows = {name: int(table.shape[0]) for name, table in voices.items()}
    if len(set(rows.values())) != 1:
        raise BadInput(f"sherpa-onnx needs every voice with the same number of style rows, not {rows}")
    return next(iter(rows.values()))


def write_kokoro_onnx_files(primary: Path, voices: Mapping[str, Any]) -> dict[str, Path]:
    """kokoro-onnx's voices `.npz` beside `primary`, float32 [N, 1, 256] per name; {"voices": path}."""
    tables = check_voices(voices)
    target = primary.with_name(KOKORO_ONNX_VOICES)
    with atomic_path(target) as tmp, open(tmp, "xb") as fh:  # np.savez appends .npz to a name, not a file
        np.savez(fh, **tables)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return {"voices": target}


def write_sherpa_files(primary: Path, voices: Mapping[str, Any], vocab: Mapping[str, int]) -> dict[str, Path]:
    """sherpa-onnx's `voices.bin` (speaker ids in `voices` order, as in `sherpa_metadata`) and `tokens.txt`
    beside `primary`; returns {"voices": path, "tokens": path}."""
    tables = check_voices(voices)
    _same_rows(tables)
    bin_path = primary.with_name(SHERPA_VOICES)
    with atomic_path(bin_path) as tmp, open(tmp, "xb") as fh:
        for table in tables.values():
            fh.write(np.ascontiguousarray(table, dtype="<f4").tobytes())
    return {
        "voices": bin_path,
        "tokens": atomic_write_text(primary.with_name(SHERPA_TOKENS), tokens_text(vocab)),
    }


def sherpa_metadata_for(voices: Mapping[str, Any], *, language: str = "en-us") -> dict[str, str]:
    """`sherpa_metadata` for these voices (their names and rows)."""
    tables = check_voices(voices)
    return sherpa_metadata(list(tables), _same_rows(tables), language=language)


def espeak_data_dir() -> Path | None:
    """An espeak-ng-data folder from PyPI (espeakng-loader's, else piper-tts's), for sherpa-onnx < 2.0's
    `data_dir`; None when neither is installed. sherpa-onnx 2.x ignores `data_dir`."""
    try:
        import espeakng_loader

        return Path(espeakng_loader.get_data_path())
    except ImportError:
        pass
    try:
        from piper.phonemize_espeak import ESPEAK_DATA_DIR
    except ImportError:
        return None
    return Path(ESPEAK_DATA_DIR)
