"""voxport's runtime API: speak with an exported artifact or a checkpoint inside your own process.

    import voxport
    voice = voxport.load("build/joe-medium/onnx/joe-medium.int8.onnx")
    audio = voice.synthesize("Hello there.", speed=1.1)   # float32 numpy array at voice.sample_rate
    for chunk in voice.stream("A long paragraph. With sentences."):
        play(chunk)                                        # the first chunk comes long before the rest

`voxport say` is this API plus a WAV writer. Text is split as the family's own runtime splits it
(VITS: Piper's sentences; Pocket TTS: Kyutai's chunks of up to 50 tokens), each piece is spoken in
turn, and within a piece the family streams what it can (VITS: chunks of frames, exact; Pocket TTS:
one 80 ms frame at a time). Every input and setting is checked before the first chunk is made, so a
bad id or setting is a `BadInput` at the call, never halfway through the audio.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import Family, FamilyModel, SynthesisSettings, Voice, check_ids
from voxport.families.registry import detect_family, families, load_model

__all__ = ["CheckpointVoice", "Synthesizer", "load", "open_voice", "voice_family"]


class CheckpointVoice:
    """The fp32 reference: the family's synthesis loop over its torch graphs."""

    def __init__(self, model: FamilyModel) -> None:
        self.model = model
        self.sample_rate = model.sample_rate
        described = model.describe()
        self.vocab_size = int(described["vocab_size"])
        self.num_speakers = int(described.get("num_speakers", 1))
        self._runner = model.torch_runner()
        #: the family's faster streaming paths, for the runtime API (e.g. a cached voice state)
        self.runtime_options: dict[str, Any] = dict(getattr(model, "runtime_options", {}))
        #: VITS checkpoints decode in chunks of frames within a sentence
        self.chunked = "chunk_frames" in inspect.signature(model.stream).parameters

    def text_to_ids(self, text: str) -> list[int]:
        return self.model.text_to_ids(text)

    def text_pieces(self, text: str) -> list[list[int]]:
        return self.model.text_pieces(text)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        return self.model.id_pieces(ids)

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        return self.model.synthesize(self._runner, ids, settings).audio

    def stream(self, ids: Sequence[int], settings: SynthesisSettings, **options: Any) -> Iterator[np.ndarray]:
        return self.model.stream(self._runner, ids, settings, **options)


class Synthesizer:
    """A loaded voice: `synthesize` and `stream` text or ids at `sample_rate`.

    `speed` is the speaking rate (1 = the voice's own pace, 2 = twice as fast), mapped by the family
    (VITS: its length scale; a family without a pace control refuses any other speed). `speaker` picks
    a speaker id (multi-speaker VITS) or a voice prompt (Pocket TTS: a WAV or .npy). `seed` fixes the
    noise, so a call is reproducible. Further keyword arguments are the family's own settings
    (`voxport.families.<family>.settings`, e.g. `noise_scale=0` or `temperature=0.5`)."""

    def __init__(self, voice: Voice, family: type[Family], source: Path) -> None:
        self.voice = voice
        self.family = family.name
        self._family = family
        self.source = source
        self.sample_rate = int(voice.sample_rate)

    def __repr__(self) -> str:
        return f"<voxport voice {self.source} ({self.family}, {self.sample_rate} Hz)>"

    def settings(
        self, *, speed: float = 1.0, speaker: int | str | None = None, seed: int = 0, **options: Any
    ) -> SynthesisSettings:
        """The family's settings for one call, checked (BadInput names the bad one)."""
        return call_settings(self._family, speed=speed, speaker=speaker, seed=seed, **options)

    def pieces(self, text: str | None = None, *, ids: Sequence[int] | None = None) -> list[list[int]]:
        """The ids of each piece the text (or ids) is spoken in: sentences, or chunks of them."""
        if (text is None) == (ids is None):
            raise BadInput("give the text to say, or ids, but not both")
        if ids is not None:
            return self.voice.id_pieces(list(ids))
        if not isinstance(text, str) or not text.strip():
            raise BadInput("empty text: give a sentence with at least one letter")
        return self.voice.text_pieces(text)

    def stream(
        self,
        text: str | None = None,
        *,
        ids: Sequence[int] | None = None,
        speed: float = 1.0,
        speaker: int | str | None = None,
        seed: int = 0,
        chunk_frames: int | None = None,
        **options: Any,
    ) -> Iterator[np.ndarray]:
        """float32 audio chunks in order; joined, they are what `synthesize` returns (no gap, no
        repeated sample). `chunk_frames` fixes the size of the chunks a sentence is decoded in, for a
        family that decodes in chunks (VITS); by default they start small and grow."""
        settings = self.settings(speed=speed, speaker=speaker, seed=seed, **options)
        pieces = self.pieces(text, ids=ids)
        check_pieces(self.voice, pieces, settings)
        stream_options = self._stream_options(chunk_frames)
        return _chunks(self.voice, pieces, settings, stream_options)

    def synthesize(
        self,
        text: str | None = None,
        *,
        ids: Sequence[int] | None = None,
        speed: float = 1.0,
        speaker: int | str | None = None,
        seed: int = 0,
        **options: Any,
    ) -> np.ndarray:
        """The whole audio as one float32 array at `sample_rate`."""
        chunks = list(self.stream(text, ids=ids, speed=speed, speaker=speaker, seed=seed, **options))
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def _stream_options(self, chunk_frames: int | None) -> dict[str, Any]:
        if chunk_frames is None:
            return {}
        if not getattr(self.voice, "chunked", False):
            raise BadInput(
                f"chunk_frames: this {self.family} voice does not decode in chunks of frames "
                "(it streams what its loop makes); leave chunk_frames out"
            )
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise BadInput(f"chunk_frames must be a whole number of frames >= 1, got {chunk_frames!r}")
        return {"chunk_frames": chunk_frames}


def call_settings(
    family: type[Family],
    *,
    speed: float = 1.0,
    speaker: int | str | None = None,
    seed: int = 0,
    **options: Any,
) -> SynthesisSettings:
    """`family`'s settings for one call from the API's arguments; needs no model, so the CLI checks a
    command line with it before anything loads."""
    model = family.settings
    if speaker is not None:
        if model.speaker_field is None:
            raise BadInput(f"{family.name} voices have no speakers to choose; leave the speaker out")
        if model.speaker_field in options:
            raise BadInput(f"give the speaker once: speaker= or {model.speaker_field}=, not both")
        options[model.speaker_field] = speaker
    settings = model(seed=seed, **options)
    if isinstance(speed, bool) or not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
        raise BadInput(f"speed must be a positive number (1 = the voice's own pace), got {speed!r}")
    if speed != 1.0:
        try:
            settings = settings.at_speed(float(speed))
        except BadInput as exc:
            raise BadInput(f"{family.name}: {exc}") from None
    return settings


def _chunks(
    voice: Voice, pieces: Sequence[Sequence[int]], settings: SynthesisSettings, options: dict[str, Any]
) -> Iterator[np.ndarray]:
    """Each piece's chunks in turn. Only the first piece's first chunk decides the time to first audio:
    a voice that decodes in chunks is told when it is `continuing` a text already playing, and then
    decodes in as few windows as it likes."""
    runtime = dict(getattr(voice, "runtime_options", {}))  # a family's faster streaming paths
    for index, ids in enumerate(pieces):
        if not hasattr(voice, "stream"):
            yield voice.speak(ids, settings)
        elif getattr(voice, "chunked", False) and index > 0 and "chunk_frames" not in options:
            yield from voice.stream(ids, settings, continuing=True, **runtime)
        else:
            yield from voice.stream(ids, settings, **runtime, **options)


def check_pieces(voice: Voice, pieces: Sequence[Sequence[int]], settings: SynthesisSettings) -> None:
    """Every id of every piece and the speaker, against what the voice knows, before any audio is made."""
    for piece in pieces:
        check_ids(piece, voice.vocab_size)
    speaker = getattr(settings, "speaker_id", None)  # the setting of families whose voices have speakers
    if speaker is not None and not 0 <= speaker < voice.num_speakers:
        if voice.num_speakers == 1:
            raise BadInput(f"speaker {speaker}: this voice has a single speaker; leave the speaker out")
        raise BadInput(f"speaker id {speaker} out of range 0..{voice.num_speakers - 1}")


def load(path: str | Path, *, trust_pickle: bool = False) -> Synthesizer:
    """Open an exported artifact (a voxport `<name>.<precision>.onnx`, a Piper voice `.onnx`) or a
    checkpoint (directory or weights file) to speak with. Pickle checkpoints need `trust_pickle`."""
    source = Path(path)
    family, exported = _identify(source)
    return Synthesizer(_open(source, family, exported, trust_pickle), family, source)


def voice_family(path: Path) -> type[Family]:
    """The family that speaks `path` (a checkpoint, or an artifact voxport exported), found without
    loading weights, so its settings can be checked before any model loads."""
    return _identify(path)[0]


def open_voice(path: Path, *, trust_pickle: bool = False) -> Voice:
    family, exported = _identify(path)
    return _open(path, family, exported, trust_pickle)


def _identify(path: Path) -> tuple[type[Family], bool]:
    """`path`'s family, and whether it is an artifact voxport exported (read from its metadata: an
    ONNX graph's or a Core ML package's) rather than a checkpoint or a foreign voice file."""
    _check_speakable(path)
    if path.suffix == ".onnx" and (family := _onnx_family(path)) is not None:
        return families()[family], True
    if path.suffix == ".mlpackage":
        return families()[_coreml_family(path)], True
    return detect_family(path), False


def _open(path: Path, family: type[Family], exported: bool, trust_pickle: bool) -> Voice:
    if exported:
        return family.open_artifact(path)
    return CheckpointVoice(load_model(path, family=family.name, trust_pickle=trust_pickle))


def _coreml_family(path: Path) -> str:
    from voxport.runtime.coreml import package_metadata

    family = package_metadata(path).get("family")
    if family not in families():
        raise BadInput(f"{path}: exported for family {family!r}, which this voxport does not know")
    return str(family)


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
