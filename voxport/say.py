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

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import Family, FamilyModel, SynthesisSettings, Voice, check_ids
from voxport.families.registry import detect_family, families, load_model
from voxport.io import atomic_path

__all__ = ["CheckpointVoice", "Spoken", "Voice", "check_inputs", "open_voice", "speak_to", "voice_family"]


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
        return self.model.text_pieces(text)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        return self.model.id_pieces(ids)

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        return self.model.synthesize(self._runner, ids, settings).audio

    def stream(self, ids: Sequence[int], settings: SynthesisSettings) -> Iterator[np.ndarray]:
        return self.model.stream(self._runner, ids, settings)


def check_inputs(voice: Voice, pieces: Sequence[Sequence[int]], settings: SynthesisSettings) -> None:
    """Every id of every piece and the speaker, against what the voice knows, before any audio is made."""
    for piece in pieces:
        check_ids(piece, voice.vocab_size)
    speaker = getattr(settings, "speaker_id", None)  # the setting of families whose voices have speakers
    if speaker is not None and not 0 <= speaker < voice.num_speakers:
        if voice.num_speakers == 1:
            raise BadInput(f"--speaker {speaker}: this voice has a single speaker; leave --speaker out")
        raise BadInput(f"speaker id {speaker} out of range 0..{voice.num_speakers - 1}")


def voice_family(path: Path) -> type[Family]:
    """The family that speaks `path` (a checkpoint, or an artifact voxport exported), found without
    loading weights, so its settings can be checked before any model loads."""
    _check_speakable(path)
    if path.suffix == ".onnx" and (family := _onnx_family(path)) is not None:
        return families()[family]
    return detect_family(path)


def open_voice(path: Path, *, trust_pickle: bool = False) -> Voice:
    _check_speakable(path)
    if path.suffix == ".onnx":
        family = _onnx_family(path)
        if family is not None:
            return families()[family].open_artifact(path)
    return CheckpointVoice(load_model(path, trust_pickle=trust_pickle))


def _check_speakable(path: Path) -> None:
    if not path.exists():
        raise BadInput(f"{path}: no such checkpoint or artifact")
    from voxport.inspect import not_a_voice  # a build dir, GGUF, Core ML, empty file: say what it is

    if (why := not_a_voice(path)) is not None:
        raise BadInput(why)


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
