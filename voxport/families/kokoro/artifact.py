"""Speaking with an exported Kokoro artifact in ONNX Runtime, as kokoro-onnx does.

The primary file is the one-graph form (tokens, style, speed → audio), which has no source noise, like
the published export. Voices are the style presets written beside it (`voices.npz`, kokoro-onnx's
format); text goes through the same phonemizer as the checkpoint. Ids and the voice name are checked
against what the graph and the voices file say, so a bad one is one clear error, not an ONNX Runtime
traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import SynthesisSettings, check_ids
from voxport.families.kokoro.frontend import MAX_PIECE_IDS, id_pieces, text_pieces, text_to_ids
from voxport.families.kokoro.runtimes import KOKORO_ONNX_VOICES
from voxport.families.kokoro.settings import KokoroSettings
from voxport.families.kokoro.source import pick_voice, read_voices
from voxport.runtime.ort import graph_metadata, ort_session


class KokoroArtifactVoice:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.session = ort_session(path)
        meta = graph_metadata(self.session, path, "tts")
        self.sample_rate = int(meta["sample_rate"])
        self.vocab_size = int(meta["vocab_size"])
        voices_file = path.with_name(KOKORO_ONNX_VOICES)
        if not voices_file.is_file():
            raise BadInput(f"{path}: no {KOKORO_ONNX_VOICES} beside it (the voices it was built with)")
        self.voices = read_voices(voices_file)
        self.num_speakers = len(self.voices)

    def text_to_ids(self, text: str) -> list[int]:
        return text_to_ids(text)

    def text_pieces(self, text: str) -> list[list[int]]:
        return text_pieces(text)

    def id_pieces(self, ids: Sequence[int]) -> list[list[int]]:
        """Cut at pauses and words, as the checkpoint's loop cuts them."""
        return id_pieces(ids)

    def stream(self, ids: Sequence[int], settings: SynthesisSettings, **_: object) -> Iterator[np.ndarray]:
        """One sentence at a time (the graph renders a whole utterance)."""
        yield self.speak(ids, settings)

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        kokoro = KokoroSettings.of(settings)
        if "noise_scale" in kokoro.model_fields_set and kokoro.noise_scale != 0:
            raise BadInput("an exported Kokoro graph has no source noise (as kokoro-onnx's); leave noise out")
        checked = check_ids(ids, self.vocab_size)
        if len(checked) > MAX_PIECE_IDS:
            raise BadInput(f"{len(checked)} ids is more than the {MAX_PIECE_IDS} Kokoro takes at once")
        pack = pick_voice(kokoro.voice, self.voices)
        style = np.asarray(pack[min(len(checked), len(pack)) - 1], np.float32).reshape(1, -1)
        feed = {
            "tokens": np.asarray([[0, *checked, 0]], np.int64),
            "style": style,
            "speed": np.asarray([kokoro.speed], np.float32),
        }
        (audio,) = self.session.run(["audio"], feed)
        return np.asarray(audio, np.float32).reshape(-1)
