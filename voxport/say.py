"""`voxport say`: speak text (or ids) with a checkpoint or with an exported artifact.

A checkpoint runs the family's fp32 torch loop; an artifact runs in the runtime users ship (ONNX
Runtime), through its family's own artifact voice. Either way the result is a WAV file.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class CheckpointVoice:
    """The fp32 reference: the family's synthesis loop over its torch graphs."""

    def __init__(self, model: FamilyModel) -> None:
        self.model = model
        self.sample_rate = model.sample_rate

    def text_to_ids(self, text: str) -> list[int]:
        return self.model.text_to_ids(text)

    def speak(self, ids: Sequence[int], settings: SynthesisSettings) -> np.ndarray:
        return self.model.synthesize(self.model.torch_runner(), ids, settings).audio


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
