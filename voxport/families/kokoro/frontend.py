"""Kokoro's text frontend: text -> phonemes -> ids, exactly as kokoro-onnx makes them.

kokoro-onnx (`kokoro_onnx.tokenizer.Tokenizer`) phonemizes with espeak-ng through `phonemizer`
(`preserve_punctuation=True, with_stress=True`), the library and its data from `espeakng-loader`, so it runs
offline from PyPI; it keeps only characters in the vocabulary, and `Kokoro.create` then collapses
whitespace runs to one space. Every phoneme is one character and one id (Kokoro v1.0's `vocab`, from
`KOKORO_CONFIG`). The ids returned here carry no pads: the model reads `[0, *ids, 0]`, and the synthesis
loop adds the two zeros (as `kokoro_onnx.Kokoro._infer` and hexgrad's `KModel.forward` do), never the
frontend. kokoro-onnx is imported on first use, so the rest of voxport works without it.

Bounds: the graph's positions are ALBERT's 512 (`plbert.max_position_embeddings`) including the two pads,
so KModel accepts up to 510 ids; voices have 510 style rows, and sherpa-onnx's Kokoro picks row n for n
ids (not n - 1 as kokoro-onnx and KModel's pipeline do) and refuses n >= 510. `text_pieces` keeps each
piece to `MAX_PIECE_IDS` = 508, within every one of these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from voxport import pieces
from voxport.errors import BadInput
from voxport.families.kokoro.source import KOKORO_CONFIG

#: ids per piece `text_pieces` allows (see the module docstring for the limits it stays under)
MAX_PIECE_IDS = 510 - 2
PAD_ID = 0
_INSTALL_HINT = "pip install 'voxport[kokoro]'"
#: a sentence ends after . ! ? … and the whitespace that follows (kokoro-onnx's chunker's sentence marks)
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def vocab() -> dict[str, int]:
    """Kokoro v1.0's phoneme vocabulary (symbol -> id)."""
    table: dict[str, int] = KOKORO_CONFIG["vocab"]
    return table


@cache
def _tokenizer() -> Any:
    """kokoro-onnx's Tokenizer on Kokoro v1.0's vocabulary, made once (it points phonemizer's espeak
    wrapper at espeakng-loader's library and data, process-wide)."""
    try:
        from kokoro_onnx.tokenizer import Tokenizer
    except ImportError as exc:
        raise BadInput(f"Kokoro text needs kokoro-onnx ({exc}); install it with: {_INSTALL_HINT}") from exc
    return Tokenizer(vocab=dict(vocab()))


def phonemize(text: str, lang: str = "en-us") -> str:
    """The phoneme string kokoro-onnx's `Kokoro.create` speaks for `text` (espeak-ng voice `lang`, e.g.
    "en-us", "en-gb", "fr-fr", "ja"): only vocabulary symbols, whitespace runs collapsed to one space."""
    tokenizer = _tokenizer()
    try:
        phonemes = tokenizer.phonemize(text, lang)
    except RuntimeError as exc:  # phonemizer: "language ... is not supported by the espeak backend"
        raise BadInput(
            f"espeak-ng cannot phonemize language {lang!r} ({exc}); give an espeak-ng voice"
        ) from exc
    return " ".join(str(phonemes).split())


def phonemes_to_ids(phonemes: str) -> list[int]:
    """One id per phoneme symbol; symbols outside the vocabulary are dropped, as kokoro-onnx does."""
    table = vocab()
    return [table[symbol] for symbol in phonemes if symbol in table]


def text_to_ids(text: str, lang: str = "en-us") -> list[int]:
    """The ids of the whole text, without Kokoro's two 0 pads (the loop adds them). Longer than the
    model's 510 ids for long texts: use `text_pieces` to synthesize."""
    return phonemes_to_ids(phonemize(text, lang))


def phoneme_pieces(text: str, lang: str = "en-us", max_ids: int = MAX_PIECE_IDS) -> list[str]:
    """The phonemes of `text` split at sentence ends, and a sentence longer than `max_ids` symbols further
    by kokoro-onnx's own chunker (at clause marks, then word boundaries, mid-word only as a last resort;
    balanced lengths). Empty when the text has nothing to say."""
    if max_ids < 1:
        raise BadInput(f"max_ids must be at least 1, not {max_ids}")
    from kokoro_onnx.chunker import split_phonemes  # _tokenizer() above has checked kokoro-onnx is there

    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(phonemize(text, lang)):
        if sentence.strip():
            pieces.extend(str(piece) for piece in split_phonemes(sentence, max_ids))
    return pieces


def text_pieces(text: str, lang: str = "en-us", max_ids: int = MAX_PIECE_IDS) -> list[list[int]]:
    """The ids of each sentence of `text` (see `phoneme_pieces`), each at most `max_ids` long and
    non-empty, without pads."""
    return [ids for ids in (phonemes_to_ids(p) for p in phoneme_pieces(text, lang, max_ids)) if ids]


def id_pieces(ids: Sequence[int], table: Mapping[str, int] | None = None) -> list[list[int]]:
    """A run of ids in pieces of at most MAX_PIECE_IDS, cut at pauses, then word boundaries, of the
    vocabulary `table` (default: Kokoro v1.0's); ids that fit one piece stay one piece."""
    symbols: dict[str, object] = dict(table if table is not None else vocab())
    return pieces.id_pieces(
        ids,
        MAX_PIECE_IDS,
        pauses=pieces.symbol_ids(symbols, pieces.PAUSE_SYMBOLS),
        words=pieces.symbol_ids(symbols, pieces.WORD_SYMBOLS),
    )
