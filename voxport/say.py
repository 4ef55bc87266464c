"""`voxport say`: the runtime API's audio stream (`voxport.api`) written to a WAV file or stdout.

Long input is spoken piece by piece in bounded memory (see `voxport.pieces`): each sentence (Pocket
TTS: each chunk of sentences up to 50 tokens, as Kyutai does; a run-on sentence cut at pauses and
words) is synthesized on its own, in chunks where the family streams, and each chunk is written before
the next one is made, so peak memory follows the longest piece and never the length of the text.
Every id and every setting is checked before the first chunk (`Synthesizer.stream`), so nothing is
half-spoken onto stdout before an error.
"""

from __future__ import annotations

import sys
import time
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxport.api import CheckpointVoice, call_settings, check_pieces, load, open_voice, voice_family
from voxport.io import atomic_path

__all__ = [
    "CheckpointVoice",
    "Spoken",
    "call_settings",
    "check_pieces",
    "load",
    "open_voice",
    "speak_to",
    "voice_family",
]


@dataclass(frozen=True)
class Spoken:
    seconds: float
    #: wall time from the start of synthesis to the first audio piece (time to first audio)
    first_audio_seconds: float
    compute_seconds: float
    chunks: int


def _pcm16(audio: np.ndarray) -> bytes:
    """Little-endian 16-bit PCM, rounded to nearest as libsndfile's float-to-PCM_16 conversion does."""
    return np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def speak_to(chunks: Iterable[np.ndarray], sample_rate: int, output: Path | str) -> Spoken:
    """Write the audio `chunks` (from `Synthesizer.stream`) as they are produced: a WAV file (16-bit,
    renamed into place when complete, so a reader never sees a half-written file), or raw 16-bit PCM on
    stdout for `-`, which a player can start on before synthesis ends (`... -o - | aplay -r 24000 -f
    S16_LE`). Only one chunk's audio is held at a time.

    `Spoken.chunks` counts the chunks written: per sentence, the chunks of frames a VITS voice decodes
    (one per sentence for a voice without its split graphs), or one per 80 ms frame for Pocket TTS."""
    started = time.perf_counter()
    first: float | None = None
    samples = count = 0

    def timed() -> Iterator[np.ndarray]:
        nonlocal first, samples, count
        for chunk in chunks:
            if first is None:
                first = time.perf_counter() - started
            samples += chunk.size
            count += 1
            yield np.clip(chunk, -1.0, 1.0)

    if str(output) == "-":
        for chunk in timed():
            sys.stdout.buffer.write(_pcm16(chunk))
            sys.stdout.buffer.flush()
    else:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Python's own wave writer, not libsndfile: a full disk or a file size limit then surfaces as
        # the OSError it is (libsndfile reports only "System error."), which the CLI turns into one line
        with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            for chunk in timed():
                wav.writeframes(_pcm16(chunk))
    compute = time.perf_counter() - started
    return Spoken(samples / sample_rate, first if first is not None else compute, compute, count)
