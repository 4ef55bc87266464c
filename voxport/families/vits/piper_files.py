"""What Piper and sherpa-onnx need beside a Piper-compatible ONNX (the VITS `tts` graph) to load it.

The primary VITS graph already has Piper's interface (``input``, ``input_lengths``, ``scales`` [,
``sid``] → ``output``). The runtimes additionally need:

- Piper (`piper-tts`): the voice config beside the model as ``X.onnx.json``. It is the source voice's
  `.onnx.json` verbatim (phoneme map, espeak voice, inference scales, speaker map), so a converted
  voice keeps its phonemization and its default noise/length scales.
- sherpa-onnx: ONNX `metadata_props` that mark the model as a Piper VITS voice (the keys sherpa-onnx's
  own `scripts/piper/add_meta_data.py` writes: ``model_type=vits``, ``comment=piper``, ``language``,
  ``voice``, ``has_espeak``, ``n_speakers``, ``sample_rate``) and a ``tokens.txt`` of ``symbol id``
  lines from the phoneme map. sherpa-onnx 2.x no longer phonemizes: callers pass phonemes as
  ``GenerationConfig.phoneme_codepoints`` and it maps them through tokens.txt, adding bos/pad/eos.

The metadata is not written here: `piper_onnx_metadata` returns it and the VITS family puts it on its
``tts`` graph spec, so the exporter stamps it while writing the ONNX once (no second rewrite of a large
file). `write_piper_sidecars` writes the two side files, atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from voxport.errors import BadInput
from voxport.families.vits.frontend import check_piper_config
from voxport.io import atomic_write_json, atomic_write_text

TOKENS_FILE = "tokens.txt"


def piper_onnx_metadata(
    piper_config: Mapping[str, Any], *, sample_rate: int, n_speakers: int
) -> dict[str, str]:
    """The metadata_props sherpa-onnx reads to treat an ONNX as a Piper VITS voice.

    `language` is the English language name as sherpa-onnx's converter derives it (from ISO 639, which
    for Piper voices is the config's ``language.name_english``); `voice` is the espeak voice, or the
    config's ``lang_code`` where a voice has one (as that converter does)."""
    config = check_piper_config(piper_config)
    language = config.get("language") if isinstance(config.get("language"), Mapping) else {}
    espeak = config.get("espeak") if isinstance(config.get("espeak"), Mapping) else {}
    voice = config.get("lang_code") or espeak.get("voice") or ""
    name = language.get("name_english") or language.get("family") or language.get("code") or str(voice)
    return {
        "model_type": "vits",
        "comment": "piper",  # sherpa-onnx: "must be piper for models from piper"
        "language": str(name),
        "voice": str(voice),
        "has_espeak": "1",
        "n_speakers": str(int(n_speakers)),
        "sample_rate": str(int(sample_rate)),
    }


def tokens_text(piper_config: Mapping[str, Any]) -> str:
    """``symbol id`` lines in phoneme-map order (the space symbol gives a line starting with a space).

    Symbols that cannot sit on one line (newlines) are left out, and a symbol mapped to several ids
    keeps its first, as sherpa-onnx's converter does: tokens.txt holds one id per symbol."""
    config = check_piper_config(piper_config)
    lines = [
        f"{symbol} {ids[0]}\n"
        for symbol, ids in config["phoneme_id_map"].items()
        if "\n" not in symbol and "\r" not in symbol
    ]
    return "".join(lines)


def write_piper_sidecars(
    onnx_path: Path, piper_config: Mapping[str, Any], *, sample_rate: int, n_speakers: int
) -> list[Path]:
    """Write ``<onnx>.json`` (the Piper voice config) and ``tokens.txt`` beside `onnx_path`.

    The config is written as given, inference scales included; its sample rate and speaker count must
    agree with the exported model, since Piper trusts the config for both (a wrong rate plays the
    audio at the wrong speed). tokens.txt is per directory, as sherpa-onnx expects; every precision of
    one voice writes the same content. Returns the written paths."""
    config = check_piper_config(piper_config)
    if config["audio"]["sample_rate"] != int(sample_rate):
        raise BadInput(
            f"piper.json says audio.sample_rate {config['audio']['sample_rate']}, the model runs at "
            f"{sample_rate} Hz; fix piper.json in the checkpoint"
        )
    if max(config["num_speakers"], 1) != max(int(n_speakers), 1):
        raise BadInput(
            f"piper.json says num_speakers {config['num_speakers']}, the model has {n_speakers}; "
            "fix piper.json in the checkpoint"
        )
    onnx_path = Path(onnx_path)
    config_path = onnx_path.with_name(onnx_path.name + ".json")
    tokens_path = onnx_path.with_name(TOKENS_FILE)
    atomic_write_json(config_path, config)
    atomic_write_text(tokens_path, tokens_text(config))
    return [config_path, tokens_path]
