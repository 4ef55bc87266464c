"""Speaking with an exported VITS artifact: its one-graph ONNX in ONNX Runtime, Piper's interface.

Text goes through the same frontend as the checkpoint: the Piper voice config written beside the
artifact (`<name>.onnx.json`) when there is one; otherwise the caller gives ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxport.errors import BadInput
from voxport.families.base import SynthesisSettings
from voxport.families.vits.frontend import PiperFrontend
from voxport.validate.runners import ort_session


class VitsArtifactVoice:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.session = ort_session(path)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("graph") != "tts":
            raise BadInput(
                f"{path}: a '{meta.get('graph')}' graph; speak with the primary <name>.<precision>.onnx"
            )
        self.sample_rate = int(meta.get("sample_rate", 22050))
        sidecar = path.with_name(path.name + ".json")
        self.frontend = (
            PiperFrontend.from_bytes(sidecar.read_bytes(), source=str(sidecar)) if sidecar.is_file() else None
        )
        self.inputs = {i.name for i in self.session.get_inputs()}

    def text_to_ids(self, text: str) -> list[int]:
        if self.frontend is None:
            raise BadInput(f"{self.path}: no text frontend beside this artifact; give ids with --ids")
        return self.frontend.text_to_ids(text)

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        if not ids:
            raise BadInput("empty input: give at least one token id")
        feed = {
            "input": np.asarray([list(ids)], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray(
                [settings.noise_scale, settings.length_scale, settings.noise_scale_duration], dtype=np.float32
            ),
        }
        if "sid" in self.inputs:
            feed["sid"] = np.asarray([settings.speaker_id or 0], dtype=np.int64)
        (audio,) = self.session.run(["output"], feed)
        return audio.reshape(-1).astype(np.float32)
