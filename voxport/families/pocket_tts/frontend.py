"""Pocket TTS text frontend: Kyutai's prompt preparation, then its tokenizer.

The released models read sentencepiece pieces (`tokenizer.model`, or the same vocabulary as
`tokenizer.json`). Kyutai prepares the text first (capital first letter, terminal punctuation,
optional padding of short prompts); the number of words also sets how many frames follow the
end-of-speech frame. Both are reproduced here so that ids match Kyutai's for the same text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from voxport.errors import BadInput

#: tokens per Pocket TTS chunk: Kyutai's `max_tokens` (the model was trained on prompts of this size;
#: longer ones skip words, and every token adds to the prompt and to the frame budget of the chunk).
POCKET_CHUNK_TOKENS = 50

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
#: words at or below which Kyutai keeps more frames after end of speech (short prompts end abruptly)
SHORT_TEXT_WORDS = 4


def prepare_text(text: str, options: Mapping[str, Any]) -> str:
    """Kyutai's `prepare_text_prompt` with the config's options (defaults as in its Config)."""
    text = text.strip()
    replace = options.get("replace_characters")
    if replace:
        text = " ".join(text.translate(str.maketrans(dict(replace))).split())
        text = re.sub(r"([.!?\u2026])\s*[,;:]", r"\1", text)
    if not text:
        raise BadInput("empty text: give a sentence with at least one word")
    text = text.replace("\n", " ").replace("\r", " ").replace("  ", " ")
    if options.get("remove_semicolons", False):
        text = text.replace(";", ",")
    if options.get("capitalize_first_letter", True) and not text[0].isupper():
        text = text[0].upper() + text[1:]
    if options.get("append_terminal_punctuation", True):
        text = _terminal_punctuation(text)
    if options.get("pad_with_spaces_for_short_inputs", False) and len(text.split()) < 5:
        text = " " * 8 + text
    return text


_TERMINAL = ".!?\u2026"
_WEAK = ",;:-\u2013\u2014"
_CLOSERS = "\"'\u201d\u2019)]\u00bb"


def _terminal_punctuation(text: str) -> str:
    """End on sentence-final punctuation (after any closing quotes): the models were trained on
    sentences that do, and mispronounce or repeat the last word otherwise."""
    core = text.rstrip(_CLOSERS + " ")
    closers = text[len(core) :].strip()
    if not core or core[-1] in _TERMINAL:
        return text
    if core[-1] in _WEAK:
        return core.rstrip(_WEAK + " ") + "." + closers
    return text + "."


def frames_after_eos_for(text: str) -> int:
    """Frames kept after the end-of-speech frame: 4 for short prompts, else 2 (Kyutai's 5/3 minus
    the EOS frame itself, the transformers convention)."""
    return 4 if len(text.split()) <= SHORT_TEXT_WORDS else 2


class Tokenizer:
    """Text → ids with the checkpoint's own tokenizer file."""

    def __init__(self, name: str, data: bytes, n_bins: int, *, source: str | None = None) -> None:
        """Parse the file now: a corrupt tokenizer must fail when the checkpoint is loaded (with its
        path), not later inside an exporter or a runtime's sidecar that reads the same bytes.

        `source`: the checkpoint or artifact the file belongs to, named in errors."""
        self.name = name
        where = f"{name} in {source}" if source else name
        fix = "replace it with the tokenizer file of the release the weights come from"
        if name == "tokenizer.model":
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor()
            try:
                sp.LoadFromSerializedProto(data)
            except Exception as exc:  # sentencepiece raises RuntimeError/OSError variants
                raise BadInput(
                    f"{where} is not a valid sentencepiece model ({_first_line(exc)}); {fix}"
                ) from None
            self._encode = lambda text: sp.encode(text, out_type=int)
            size = sp.get_piece_size()
        else:
            import tokenizers

            try:
                tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
            except Exception as exc:  # tokenizers raises its own Exception type; UnicodeDecodeError
                raise BadInput(
                    f"{where} is not a valid tokenizers JSON file ({_first_line(exc)}); {fix}"
                ) from None
            self._encode = lambda text: tok.encode(text).ids
            size = tok.get_vocab_size()
        if size > n_bins:
            raise BadInput(f"{where}: {size} pieces, more than the model's {n_bins} text embeddings")

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._encode(text)]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
