"""`voxport say`: speak text (or ids) with a checkpoint or with an exported artifact.

A checkpoint runs the family's fp32 torch loop; an artifact runs in the runtime users ship (ONNX
Runtime), through its family's own artifact voice. Either way the result is a WAV file.

Long input is spoken piece by piece in bounded memory (see `voxport.pieces`): each sentence (Pocket
TTS: each chunk of sentences up to 50 tokens, as Kyutai does; a run-on sentence cut at pauses and
words) is synthesized on its own and its audio written before the next one starts, so peak memory
follows the longest piece and never the length of the text. Every id and every setting is checked
before the first piece runs, with one function shared by checkpoints and artifacts
(`voxport.families.base.check_ids`), so nothing is half-spoken onto stdout before an error.
"""

from __future__ import annotations

import sys
import time
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import FamilyModel, SynthesisSettings, check_ids, families, load_model
from voxport.io import atomic_path
from voxport.pieces import (
    PAUSE_SYMBOLS,
    POCKET_CHUNK_TOKENS,
    VITS_PIECE_IDS,
    WORD_SYMBOLS,
    id_pieces,
    symbol_ids,
    text_pieces,
)


class Voice(Protocol):
    sample_rate: int
    #: ids lie in 0..vocab_size - 1
    vocab_size: int
    #: speaker ids lie in 0..num_speakers - 1 (1: a single-speaker voice takes no --speaker)
    num_speakers: int

    def text_to_ids(self, text: str) -> list[int]: ...

    def text_pieces(self, text: str) -> list[list[int]]:
        """Ids per bounded piece of `text` (sentences, chunks); one piece for a one-sentence text."""
        ...

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        """A run of ids in bounded pieces; ids that fit one piece stay one piece."""
        ...

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray: ...


class StreamingVoice(Voice, Protocol):
    """A voice that produces audio in pieces (autoregressive families: one frame at a time)."""

    def stream(self, ids: Sequence[int], settings: SynthesisSettings) -> Iterator[np.ndarray]: ...


class CheckpointVoice:
    """The fp32 reference: the family's synthesis loop over its torch graphs."""

    def __init__(self, model: FamilyModel) -> None:
        self.model = model
        self.sample_rate = model.sample_rate
        described = model.describe()
        self.vocab_size = int(described["vocab_size"])
        self.num_speakers = int(described.get("num_speakers", 1))
        self._runner = model.torch_runner()

    def text_to_ids(self, text: str) -> list[int]:
        return self.model.text_to_ids(text)

    def text_pieces(self, text: str) -> list[list[int]]:
        if self.model.family == "pocket_tts":
            return text_pieces(text, self.model.text_to_ids, POCKET_CHUNK_TOKENS, group=True)
        if self.model.family != "vits":
            return [self.model.text_to_ids(text)]
        if self._piper_frontend() is not None:
            return self.model.piper_frontend().sentence_ids(text, VITS_PIECE_IDS)  # type: ignore[attr-defined]
        return text_pieces(text, self.model.text_to_ids, VITS_PIECE_IDS)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        if self.model.family == "pocket_tts":
            return id_pieces(ids, POCKET_CHUNK_TOKENS)
        if self.model.family != "vits":
            return [list(ids)]
        frontend = self._piper_frontend()
        if frontend is not None:
            pauses, words = frontend.boundary_ids()
        else:
            vocab = _json_map(getattr(self.model, "tokenizer_files", {}).get("vocab.json"))
            pauses, words = symbol_ids(vocab, PAUSE_SYMBOLS), symbol_ids(vocab, WORD_SYMBOLS)
        return id_pieces(ids, VITS_PIECE_IDS, pauses=pauses, words=words)

    def _piper_frontend(self):  # noqa: ANN202 (PiperFrontend, imported lazily with its family)
        from voxport.families.vits.frontend import PIPER_CONFIG

        if PIPER_CONFIG not in getattr(self.model, "tokenizer_files", {}):
            return None
        return self.model.piper_frontend()  # type: ignore[attr-defined]

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        return self.model.synthesize(self._runner, ids, settings).audio

    def stream(self, ids: Sequence[int], settings: SynthesisSettings) -> Iterator[np.ndarray]:
        return self.model.stream(self._runner, ids, settings)


def _json_map(data: bytes | None) -> dict[str, object]:
    """A tokenizer's vocab.json (symbol -> id), or {} when absent or unreadable (no boundaries known)."""
    import json

    try:
        loaded = json.loads(data) if data else {}
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def check_inputs(voice: Voice, pieces: Sequence[Sequence[int]], settings: SynthesisSettings) -> None:
    """Every id of every piece and the speaker, against what the voice knows, before any audio is made."""
    for piece in pieces:
        check_ids(piece, voice.vocab_size)
    speaker = settings.speaker_id
    if speaker is not None and not 0 <= speaker < voice.num_speakers:
        if voice.num_speakers == 1:
            raise BadInput(f"--speaker {speaker}: this voice has a single speaker; leave --speaker out")
        raise BadInput(f"speaker id {speaker} out of range 0..{voice.num_speakers - 1}")


def open_voice(path: Path, *, trust_pickle: bool = False) -> Voice:
    if not path.exists():
        raise BadInput(f"{path}: no such checkpoint or artifact")
    from voxport.inspect import not_a_voice  # a build dir, GGUF, Core ML, empty file: say what it is

    if (why := not_a_voice(path)) is not None:
        raise BadInput(why)
    if path.suffix == ".onnx":
        family = _onnx_family(path)
        if family is not None:
            return families()[family].open_artifact(path)
    return CheckpointVoice(load_model(path, trust_pickle=trust_pickle))


def _onnx_family(path: Path) -> str | None:
    """The family a voxport-exported ONNX declares, or None for a foreign file (e.g. a Piper voice)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf DecodeError and friends
        raise BadInput(f"{path}: not a readable ONNX file") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if "voxport_version" not in meta:
        return None
    if meta.get("family") not in families():
        raise BadInput(
            f"{path}: exported for family {meta.get('family')!r}, which this voxport does not know"
        )
    return meta["family"]


@dataclass(frozen=True)
class Spoken:
    seconds: float
    #: wall time from the start of synthesis to the first audio piece (time to first audio)
    first_audio_seconds: float
    compute_seconds: float
    pieces: int


def _pcm16(audio: np.ndarray) -> bytes:
    """Little-endian 16-bit PCM, rounded to nearest as libsndfile's float-to-PCM_16 conversion does."""
    return np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def speak_to(
    voice: Voice, pieces: Sequence[Sequence[int]], settings: SynthesisSettings, output: Path | str
) -> Spoken:
    """Synthesise `pieces` (from `Voice.text_pieces` or `Voice.id_pieces`) one after another and write
    audio as it is produced: a WAV file (16-bit, renamed into place when complete, so a reader never
    sees a half-written file), or raw 16-bit PCM on stdout for `-`, which a player can start on before
    synthesis ends (`... -o - | aplay -r 24000 -f S16_LE`). Only one piece's audio is held at a time.

    `Spoken.pieces` counts the audio pieces written: one per sentence or chunk for a voice that renders
    whole utterances (VITS), one per frame for a streaming voice (Pocket TTS)."""
    check_inputs(voice, pieces, settings)
    started = time.perf_counter()
    first: float | None = None
    samples = count = 0

    def rendered(ids: Sequence[int]) -> Iterator[np.ndarray]:
        # lazily, so the clock covers synthesis for voices that render in one piece too
        if hasattr(voice, "stream"):
            yield from voice.stream(ids, settings)
        else:
            yield voice.speak(ids, settings)

    def chunks() -> Iterator[np.ndarray]:
        nonlocal first, samples, count
        for ids in pieces:
            for piece in rendered(ids):
                if first is None:
                    first = time.perf_counter() - started
                samples += piece.size
                count += 1
                yield np.clip(piece, -1.0, 1.0)

    if str(output) == "-":
        for piece in chunks():
            sys.stdout.buffer.write(_pcm16(piece))
            sys.stdout.buffer.flush()
    else:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Python's own wave writer, not libsndfile: a full disk or a file size limit then surfaces as
        # the OSError it is (libsndfile reports only "System error."), which the CLI turns into one line
        with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(voice.sample_rate)
            for piece in chunks():
                wav.writeframes(_pcm16(piece))
    compute = time.perf_counter() - started
    return Spoken(samples / voice.sample_rate, first if first is not None else compute, compute, count)
