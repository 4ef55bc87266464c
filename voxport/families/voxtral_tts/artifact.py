"""Speaking with an exported Voxtral TTS artifact: its three ONNX graphs in ONNX Runtime.

The primary file is the backbone (`<name>.<precision>.onnx`); the acoustic head and the codec sit
beside it (`.acoustic_head.onnx`, `.codec.onnx`), with `<name>.tekken.json` (the tokenizer) and
`<name>.voices.npz` (the presets). The loop's numbers come from the backbone's metadata, so no
checkpoint is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import Runner, SynthesisSettings, check_ids
from voxport.families.voxtral_tts.loop import CACHE_GRAPH, LoopSettings, LoopSpec, stream
from voxport.families.voxtral_tts.settings import VoxtralSettings
from voxport.families.voxtral_tts.voices import pick_voice, read_voices
from voxport.pieces import id_pieces, text_pieces

FAMILY = "voxtral_tts"
CHUNK_TOKENS = 120


class VoxtralArtifactVoice:
    def __init__(
        self, path: Path, meta: Mapping[str, str], runner: Runner, side_dirs: Sequence[Path]
    ) -> None:
        self.path = path
        self.spec = LoopSpec.from_json(meta[FAMILY])
        self.sample_rate = self.spec.sample_rate
        self.vocab_size = self.spec.vocab_size
        self.num_speakers = 1
        self.runner = runner
        stem = path.name.split(".")[0]

        def beside(suffix: str) -> Path | None:
            return next((d / f"{stem}{suffix}" for d in side_dirs if (d / f"{stem}{suffix}").is_file()), None)

        voices = beside(".voices.npz")
        if voices is None:
            raise BadInput(f"{path}: no {stem}.voices.npz beside it (the voice presets the export writes)")
        self.voices = read_voices(voices, self.spec.dim)
        self.tekken = beside(".tekken.json")

    @classmethod
    def open(cls, path: Path) -> VoxtralArtifactVoice:
        if path.suffix == ".mlpackage":
            from voxport.runtime.coreml import predict_runner

            return cls.coreml(path, predict_runner)
        return cls.onnx(path)

    @classmethod
    def onnx(cls, path: Path) -> VoxtralArtifactVoice:
        """The primary `<name>.<p>.onnx` (the backbone) with its head and codec beside it."""
        from voxport.runtime.ort import OrtRunner, graph_metadata, ort_session, sibling_graphs

        meta = graph_metadata(ort_session(path), path, "backbone", " (the backbone)")
        if FAMILY not in meta:
            raise BadInput(f"{path}: not a Voxtral TTS backbone (no loop numbers in its metadata)")
        files = {"backbone": path, **sibling_graphs(path, ("acoustic_head", "codec"))}
        return cls(path, meta, OrtRunner(files), [path.parent])

    @classmethod
    def coreml(cls, path: Path, runner_for: Callable[[Mapping[str, Path]], Runner]) -> VoxtralArtifactVoice:
        """A Core ML package set (`backbone_cache`, `acoustic_head`, `codec`) through `runner_for`
        (Core ML itself on macOS); tokenizer and voices from the build's onnx/ folder or beside."""
        from voxport.runtime.coreml import package_metadata, sibling_packages

        files = sibling_packages(path, (CACHE_GRAPH, "acoustic_head", "codec"))
        meta = package_metadata(files[CACHE_GRAPH])
        if FAMILY not in meta:
            raise BadInput(f"{path}: not a Voxtral TTS package set (no loop numbers in its metadata)")
        return cls(path, meta, runner_for(files), [path.parent, path.parent.parent / "onnx"])

    def text_to_ids(self, text: str) -> list[int]:
        if self.tekken is None:
            raise BadInput(
                f"{self.path}: no tokenizer (.tekken.json) beside this artifact; give ids with --ids"
            )
        from voxport.families.voxtral_tts.frontend import SpeechPrompt

        return SpeechPrompt.from_file(self.tekken).text_ids(text)

    def text_pieces(self, text: str) -> list[list[int]]:
        return text_pieces(text, self.text_to_ids, CHUNK_TOKENS, group=True)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        return id_pieces(ids, CHUNK_TOKENS)

    def stream(self, ids: Sequence[int], settings: SynthesisSettings) -> Iterator[np.ndarray]:
        s = VoxtralSettings.of(settings)
        return stream(
            self.runner,
            self.spec,
            check_ids(ids, self.vocab_size),
            pick_voice(s.voice, self.voices, dim=self.spec.dim),
            LoopSettings(seed=s.seed, noise_scale=s.noise_scale, max_frames=s.max_frames),
        )

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        frames = list(self.stream(ids, settings))
        return np.concatenate(frames) if frames else np.zeros(0, np.float32)
