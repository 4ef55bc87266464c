"""Piper's text frontend: text → espeak-ng IPA phonemes → Piper phoneme ids, exactly as Piper does it.

A Piper voice is only as good as the ids it is fed: the model was trained on espeak-ng's IPA output,
NFD-normalised (so an accent is its own symbol), mapped through the voice's `phoneme_id_map` and laid
out as ``^ _ p1 _ p2 _ … $`` (bos, pad between every phoneme, eos). Any drift here (another espeak
version, a different normalisation, a missing pad) changes the audio more than quantization does, so
voxport does not reimplement it: it calls piper-tts's own phonemizer and id mapping, which also bundle
the espeak-ng data. That keeps our ids identical to what `piper` itself feeds the model, including its
``[[ raw phonemes ]]`` blocks, vowel-cluster merging and the other phoneme types Piper knows.

Licensing: piper-tts and espeak-ng are GPL-3.0 while voxport is Apache-2.0. piper is therefore an
optional extra, imported lazily and only here, when a Piper checkpoint is asked to turn text into ids;
everything else (export, parity on given ids) works without it.

Sentences: Piper splits text into sentences and synthesizes each one on its own, then concatenates the
audio. `sentence_ids` returns exactly those per-sentence id lists, which is what a caller that wants
Piper's audio must use (synthesize each, concatenate). `text_to_ids` serves voxport's one-utterance
interface (`FamilyModel.text_to_ids`, used by parity): for one sentence it is identical to Piper's ids;
for several sentences it joins their phonemes with a word space into a single ``^ … $`` utterance. That
is a valid input for parity (reference and export see the same ids), but not the ids Piper's runtime
would use for that text: say so when reporting such a sentence, or give one sentence per entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from voxport.errors import BadInput
from voxport.pieces import PAUSE_SYMBOLS, WORD_SYMBOLS, bisect_to_fit, symbol_ids, text_rank

#: ids per VITS piece. A Piper sentence is ``^ _ p1 _ … $`` (two ids per phoneme), so 400 ids are ~200
#: phonemes, ~15 s of speech at the normal pace: longer than almost any sentence (which then is one
#: piece, exactly as Piper speaks it), short enough that the encoder's (ids x ids) attention and the
#: vocoder's activations stay in the low hundreds of MB even at the largest length scale allowed.
VITS_PIECE_IDS = 400

#: file name of the Piper voice config (the voice's `.onnx.json`, verbatim) inside a voxport checkpoint
PIPER_CONFIG = "piper.json"

#: the one message every caller sees when the GPL extra is not installed
MISSING_EXTRA = (
    "the Piper text frontend needs the optional extra: pip install 'voxport[piper]' (GPL-3.0); "
    "or give phoneme ids with --ids"
)

#: Piper's bos, pad and eos symbols (piper.const); checked without importing piper
BOS, PAD, EOS = "^", "_", "$"


def _import_piper() -> tuple[Any, Any]:
    """(PiperConfig, PiperVoice), or BadInput naming the extra; never imported at module load (GPL)."""
    try:
        from piper.config import PiperConfig
        from piper.voice import PiperVoice
    except ImportError:
        raise BadInput(MISSING_EXTRA) from None
    return PiperConfig, PiperVoice


def check_piper_config(config: Mapping[str, Any], *, source: str = PIPER_CONFIG) -> dict[str, Any]:
    """The fields voxport relies on, checked without piper so a broken config fails with a clear line.

    Returns a plain copy of `config` (the `.onnx.json` is kept verbatim otherwise)."""
    if not isinstance(config, Mapping):
        raise BadInput(f"{source}: a Piper voice config must be a JSON object")
    id_map = config.get("phoneme_id_map")
    if not isinstance(id_map, Mapping) or not id_map:
        raise BadInput(f"{source}: no phoneme_id_map; is this a Piper voice's .onnx.json?")
    for symbol, ids in id_map.items():
        if not (
            isinstance(ids, Sequence)
            and not isinstance(ids, str)
            and ids
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        ):
            raise BadInput(f"{source}: phoneme_id_map[{symbol!r}] must be a non-empty list of ids >= 0")
    missing = [s for s in (BOS, PAD, EOS) if s not in id_map]
    if missing:
        raise BadInput(f"{source}: phoneme_id_map lacks Piper's bos/pad/eos symbols {missing}")
    phoneme_type = config.get("phoneme_type", "espeak")
    espeak = config.get("espeak")
    voice = espeak.get("voice") if isinstance(espeak, Mapping) else None
    if phoneme_type == "espeak" and not (isinstance(voice, str) and voice):
        raise BadInput(f'{source}: phoneme_type espeak needs espeak.voice (e.g. "en-us")')
    for key in ("num_symbols", "num_speakers"):
        if not isinstance(config.get(key), int):
            raise BadInput(f"{source}: {key} must be an integer")
    audio = config.get("audio")
    if not isinstance(audio, Mapping) or not isinstance(audio.get("sample_rate"), int):
        raise BadInput(f"{source}: audio.sample_rate must be an integer")
    return json.loads(json.dumps(config))


class PiperFrontend:
    """Text → Piper phoneme ids for one voice config (the voice's `.onnx.json`)."""

    def __init__(self, config: Mapping[str, Any], *, source: str = PIPER_CONFIG) -> None:
        self.config = check_piper_config(config, source=source)
        self.source = source
        self._voice: Any = None

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = PIPER_CONFIG) -> PiperFrontend:
        try:
            config = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadInput(f"{source}: not valid JSON ({exc})") from None
        return cls(config, source=source)

    def _piper_voice(self) -> Any:
        """A PiperVoice without an ONNX session: only its phonemize/phonemes_to_ids are used.

        Going through PiperVoice (rather than its espeak phonemizer alone) keeps every branch of
        Piper's own text handling: raw ``[[ phonemes ]]``, phoneme types, vowel clusters."""
        if self._voice is None:
            piper_config_cls, piper_voice_cls = _import_piper()
            try:
                piper_config = piper_config_cls.from_dict(self.config)
            except (KeyError, TypeError, ValueError) as exc:
                raise BadInput(f"{self.source}: piper cannot read this voice config ({exc!r})") from None
            self._voice = piper_voice_cls(session=None, config=piper_config)
        return self._voice

    def phonemes(self, text: str) -> list[list[str]]:
        """Phonemes per sentence, as Piper's runtime splits and phonemizes `text`."""
        if not text.strip():
            raise BadInput("empty text: give a sentence with at least one letter")
        voice = self._piper_voice()
        try:
            sentences = voice.phonemize(text)
        except ImportError:
            # other phoneme types (pinyin, hebrew, ...) need further optional packages of piper-tts
            raise BadInput(
                f"{self.source}: phoneme_type {self.config.get('phoneme_type')!r} needs packages that "
                "piper-tts does not install by default; install them, or give phoneme ids with --ids"
            ) from None
        except RuntimeError as exc:  # espeak-ng: unknown voice and the like
            raise BadInput(f"{self.source}: the Piper text frontend failed on {text!r}: {exc}") from None
        return [list(s) for s in sentences if s]

    def sentence_ids(self, text: str, max_ids: int | None = None) -> list[list[int]]:
        """One id list per sentence, each ``^ _ p1 _ … $``: exactly what Piper feeds its model.

        `max_ids`: a sentence whose ids exceed it is cut at its phoneme pauses (``,``), else word
        spaces, into pieces that fit, each its own ``^ … $`` (bounded memory for run-on text; Piper
        itself has no bound). Sentences that fit are untouched. Phonemes missing from the voice's map
        are dropped with a warning, as Piper does."""
        voice = self._piper_voice()

        def to_ids(phonemes: list[str]) -> list[int]:
            return [int(i) for i in voice.phonemes_to_ids(phonemes)]

        def count(phonemes: list[str]) -> int:
            return len(to_ids(phonemes))

        limit = max_ids if max_ids is not None else float("inf")
        ids = [
            to_ids(part)
            for sentence in self.phonemes(text)
            for part in bisect_to_fit(sentence, count, limit, text_rank)  # type: ignore[arg-type]
        ]
        if not ids:
            raise BadInput(f"text {text!r} has no phonemes for this voice")
        return ids

    def boundary_ids(self) -> tuple[frozenset[int], frozenset[int]]:
        """(pause ids, word-space ids) of the phoneme map: where a run of ids may be cut."""
        id_map = self.config["phoneme_id_map"]
        return symbol_ids(id_map, PAUSE_SYMBOLS), symbol_ids(id_map, WORD_SYMBOLS)

    def text_to_ids(self, text: str) -> list[int]:
        """One utterance: Piper's ids for a single sentence; several sentences joined by a word space.

        See the module docstring for why multi-sentence text differs from Piper's runtime."""
        sentences = self.phonemes(text)
        if not sentences:
            raise BadInput(f"text {text!r} has no phonemes for this voice")
        joined: list[str] = []
        for i, sentence in enumerate(sentences):
            if i and joined[-1] != " " and sentence[0] != " ":
                joined.append(" ")
            joined.extend(sentence)
        return [int(i) for i in self._piper_voice().phonemes_to_ids(joined)]
