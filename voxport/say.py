"""`voxport say`: speak text (or ids) with a checkpoint or with an exported artifact.

A checkpoint runs the family's fp32 torch loop; an artifact runs in the runtime users ship (ONNX
Runtime), through its family's own artifact voice. Either way the result is a WAV file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import FamilyModel, SynthesisSettings, families, load_model
from voxport.io import atomic_path


class Voice(Protocol):
    sample_rate: int

    def text_to_ids(self, text: str) -> list[int]: ...

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray: ...


class StreamingVoice(Voice, Protocol):
    """A voice that produces audio in pieces (autoregressive families: one frame at a time)."""

    def stream(self, ids: Sequence[int], settings: SynthesisSettings) -> Iterator[np.ndarray]: ...


class CheckpointVoice:
    """The fp32 reference: the family's synthesis loop over its torch graphs."""

    def __init__(self, model: FamilyModel) -> None:
        self.model = model
        self.sample_rate = model.sample_rate

    def text_to_ids(self, text: str) -> list[int]:
        return self.model.text_to_ids(text)

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        return self.model.synthesize(self.model.torch_runner(), ids, settings).audio

    def stream(self, ids: Sequence[int], settings: SynthesisSettings) -> Iterator[np.ndarray]:
        return self.model.stream(self.model.torch_runner(), ids, settings)


def open_voice(path: Path, *, trust_pickle: bool = False) -> Voice:
    if not path.exists():
        raise BadInput(f"{path}: no such checkpoint or artifact")
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


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")


@dataclass(frozen=True)
class Spoken:
    seconds: float
    #: wall time from the start of synthesis to the first audio piece (time to first audio)
    first_audio_seconds: float
    compute_seconds: float
    pieces: int


def speak_to(voice: Voice, ids: Sequence[int], settings: SynthesisSettings, output: Path | str) -> Spoken:
    """Synthesise and write audio as it is produced: a WAV file (16-bit, renamed into place when
    complete, so a reader never sees a half-written file), or raw 16-bit PCM on stdout for `-`,
    which a player can start on before synthesis ends (`... -o - | aplay -r 24000 -f S16_LE`)."""
    import soundfile as sf

    started = time.perf_counter()
    # lazily, so the clock covers synthesis for voices that render in one piece too
    pieces = (
        voice.stream(ids, settings) if hasattr(voice, "stream") else (voice.speak(ids, settings) for _ in [0])
    )
    first: float | None = None
    samples = count = 0

    def chunks() -> Iterator[np.ndarray]:
        nonlocal first, samples, count
        for piece in pieces:
            if first is None:
                first = time.perf_counter() - started
            samples += piece.size
            count += 1
            yield np.clip(piece, -1.0, 1.0)

    if str(output) == "-":
        for piece in chunks():
            sys.stdout.buffer.write((piece * 32767).astype("<i2").tobytes())
            sys.stdout.buffer.flush()
    else:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        with (
            atomic_path(path) as tmp,
            sf.SoundFile(
                str(tmp), "w", samplerate=voice.sample_rate, channels=1, format="WAV", subtype="PCM_16"
            ) as wav,
        ):
            for piece in chunks():
                wav.write(piece)
    compute = time.perf_counter() - started
    return Spoken(samples / voice.sample_rate, first if first is not None else compute, compute, count)
