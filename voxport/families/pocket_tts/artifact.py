"""Speaking with an exported Pocket TTS artifact: its three ONNX graphs in ONNX Runtime.

The primary file is the backbone (`<name>.<precision>.onnx`); the flow head and codec sit beside it
(`.flow_head.onnx`, `.codec.onnx`), the tokenizer as `<name>.tokenizer.model|json`. The loop's
numbers come from the backbone's metadata, so no checkpoint is needed. Ids are checked against the
vocabulary recorded there (`pocket_tts_bins`, as the checkpoint checks its own) before any graph runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import Runner, SynthesisSettings, check_ids
from voxport.families.pocket_tts.bounded import GRAPH as BOUNDED_GRAPH
from voxport.families.pocket_tts.frontend import (
    POCKET_CHUNK_TOKENS,
    TOKENIZER_FILES,
    Tokenizer,
    frames_after_eos_for,
    prepare_text,
)
from voxport.families.pocket_tts.loop import (
    DEFAULT_FRAMES_AFTER_EOS,
    LoopSettings,
    LoopSpec,
    VoiceState,
    stream,
    voice_state,
)
from voxport.families.pocket_tts.settings import PocketSettings
from voxport.pieces import id_pieces, text_pieces
from voxport.runtime.ort import OrtRunner, ort_session, sibling_graphs


class PocketArtifactVoice:
    #: what the runtime API (`voxport.load`) streams with: a voice prompt's state computed once, the
    #: codec in its own thread (Kyutai's runtime does both); parity keeps the exact path, both off
    runtime_options: dict[str, bool] = {"voice_cache": True, "codec_thread": True}

    def __init__(
        self, path: Path, meta: Mapping[str, str], runner: Runner, text_dirs: Sequence[Path]
    ) -> None:
        """`meta`: the backbone's metadata (the loop's numbers); `runner`: the three graphs in their
        runtime; `text_dirs`: where to look for `<name>.tokenizer.*`. Use `onnx` or `coreml`."""
        self.path = path
        self.spec = LoopSpec.from_json(meta["pocket_tts"])
        self.text_options = json.loads(meta.get("pocket_tts_text", "{}"))
        self.n_bins = int(meta.get("pocket_tts_bins", 4000))
        self.sample_rate = self.spec.sample_rate
        #: n_bins text embeddings plus Kyutai's padding row, as the checkpoint's own check
        self.vocab_size = self.n_bins + 1
        self.num_speakers = 1
        self._after_eos: dict[tuple[int, ...], int] = {}
        self._voice_states: dict[str, VoiceState] = {}
        self.runner = runner
        stem = path.name.split(".")[0]
        self.tokenizer = next(
            (
                Tokenizer(name, (folder / f"{stem}.{name}").read_bytes(), self.n_bins)
                for folder in text_dirs
                for name in TOKENIZER_FILES
                if (folder / f"{stem}.{name}").is_file()
            ),
            None,
        )

    @classmethod
    def onnx(cls, path: Path) -> PocketArtifactVoice:
        """The primary `<name>.<p>.onnx` (the backbone) with its flow head and codec beside it."""
        meta = ort_session(path).get_modelmeta().custom_metadata_map
        if meta.get("graph") != "backbone" or "pocket_tts" not in meta:
            raise BadInput(
                f"{path}: a '{meta.get('graph')}' graph; speak with the primary "
                "<name>.<precision>.onnx (the backbone)"
            )
        files = {"backbone": path, **sibling_graphs(path, ("flow_head", "codec"))}
        return cls(path, meta, OrtRunner(files), [path.parent])

    @classmethod
    def coreml(cls, path: Path, runner_for: Callable[[Mapping[str, Path]], Runner]) -> PocketArtifactVoice:
        """Any of a Core ML artifact's packages (`backbone_cache`, `flow_head`, `codec`) through
        `runner_for` (Core ML itself on macOS); the tokenizer is read from the build's onnx/ folder
        or beside the packages. It streams on the exact path: the runtime options assume the
        growing-cache ONNX backbone, which Core ML's fixed-capacity one is not."""
        from voxport.runtime.coreml import package_metadata, sibling_packages

        files = sibling_packages(path, (BOUNDED_GRAPH, "flow_head", "codec"))
        meta = package_metadata(files[BOUNDED_GRAPH])
        if "pocket_tts" not in meta:
            raise BadInput(f"{path}: not a Pocket TTS package set (no loop numbers in its metadata)")
        voice = cls(path, meta, runner_for(files), [path.parent, path.parent.parent / "onnx"])
        voice.runtime_options = {}
        return voice

    def text_to_ids(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise BadInput(f"{self.path}: no tokenizer beside this artifact; give ids with --ids")
        ids = self.tokenizer.encode(prepare_text(text, self.text_options))
        self._after_eos[tuple(ids)] = frames_after_eos_for(text)
        return ids

    def text_pieces(self, text: str) -> list[list[int]]:
        """Kyutai's chunking: sentences packed into chunks of at most 50 tokens, each prepared and
        spoken on its own (with its own frames-after-EOS rule), so no prompt grows with the text."""
        return text_pieces(text, self.text_to_ids, POCKET_CHUNK_TOKENS, group=True)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        return id_pieces(ids, POCKET_CHUNK_TOKENS)

    def _settings(self, settings: PocketSettings, ids: Sequence[int]) -> LoopSettings:
        after = settings.frames_after_eos
        if after is None:
            after = self._after_eos.get(tuple(ids), DEFAULT_FRAMES_AFTER_EOS)
        return LoopSettings(
            seed=settings.seed,
            temperature=self.spec.temperature if settings.temperature is None else settings.temperature,
            max_frames=settings.max_frames,
            frames_after_eos=after,
        )

    def _voice(self, settings: PocketSettings) -> np.ndarray | None:
        from voxport.families.pocket_tts.voice import load_voice

        return None if settings.voice is None else load_voice(settings.voice, None)

    def stream(
        self,
        ids: Sequence[int],
        settings: SynthesisSettings,
        *,
        voice_cache: bool = False,
        codec_thread: bool = False,
    ) -> Iterator[np.ndarray]:
        """Audio frame by frame; the options are `PocketTTSAdapter.stream`'s (off: `speak`'s exact
        audio; `voice_cache`: the voice prompt's keys/values computed once per voice file and reused;
        `codec_thread`: the codec decodes in a second thread, same samples)."""
        settings = PocketSettings.of(settings)
        voice = self._voice(settings)
        cached = None
        if voice is not None and voice_cache and settings.voice is not None:
            if settings.voice not in self._voice_states:
                self._voice_states[settings.voice] = voice_state(self.runner, self.spec, voice)
            cached = self._voice_states[settings.voice]
        return stream(
            self.runner,
            self.spec,
            check_ids(ids, self.vocab_size),
            self._settings(settings, list(ids)),
            voice=None if cached is not None else voice,
            voice_cache=cached,
            codec_thread=codec_thread,
        )

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        frames = list(self.stream(ids, settings))
        return np.concatenate(frames) if frames else np.zeros(0, np.float32)
