"""VITS as a registered family: what voxport needs to know about it, without loading a model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from voxport.errors import BadInput
from voxport.families.base import Family, Importer, ImportRequest, Voice
from voxport.families.checkpoint import config_beside
from voxport.families.vits.model import VitsModelAdapter, load_checkpoint
from voxport.families.vits.settings import VitsSettings


def _import_piper(request: ImportRequest) -> Path:
    """A Piper voice (VOICE.onnx + its JSON, or an installed voice package) or training .ckpt."""
    from voxport.families.vits.importer import import_piper_checkpoint, import_piper_onnx
    from voxport.families.vits.piper_import import resolve_voice_package

    source = Path(request.source)
    if source.suffix == ".ckpt":
        if request.config is None:
            raise BadInput("a .ckpt needs --config VOICE.onnx.json (its phoneme map and audio settings)")
        trust = request.trust_pickle
        return import_piper_checkpoint(source, request.config, request.out_dir, trust_pickle=trust)
    if source.exists():
        return import_piper_onnx(source, request.config, request.out_dir)
    onnx_path, json_path = resolve_voice_package(request.source)
    return import_piper_onnx(onnx_path, request.config or json_path, request.out_dir)


class VitsFamily(Family):
    name: ClassVar[str] = "vits"
    settings: ClassVar[type[VitsSettings]] = VitsSettings
    #: Piper's own runtime speaks the exported one-graph ONNX (with its sidecar JSON)
    tool_packages: ClassVar[tuple[str, ...]] = ("piper-tts",)
    importers: ClassVar[Mapping[str, Importer]] = {
        "piper": Importer(
            "a Piper voice (VOICE.onnx + VOICE.onnx.json, or an installed voice package) or a Piper "
            "training checkpoint (.ckpt, with --config VOICE.onnx.json)",
            _import_piper,
        ),
    }
    checkpoint_hint: ClassVar[str] = (
        "a transformers VitsModel directory (config.json + model.safetensors), a Piper voice "
        "(.onnx + .onnx.json)"
    )

    @classmethod
    def recognizes(cls, path: Path) -> bool:
        if path.suffix == ".onnx":  # a Piper voice: the .onnx with its .onnx.json beside it
            return path.with_name(path.name + ".json").is_file()
        data = config_beside(path)
        return data is not None and data.get("model_type") == "vits"

    @classmethod
    def load(cls, path: Path, *, trust_pickle: bool = False) -> VitsModelAdapter:
        return load_checkpoint(path, trust_pickle=trust_pickle)

    @classmethod
    def demo(cls, out_dir: Path, *, seed: int = 0, config: str | None = None) -> Path:
        """The tiny random voice the demo recipe builds (one size: `config` is not used)."""
        from voxport.families.vits.synthetic import make_vits_checkpoint

        if config is not None:
            raise BadInput(f"the {cls.name} demo has one size; leave --config out (got {config!r})")
        return make_vits_checkpoint(out_dir, seed=seed)

    @classmethod
    def open_artifact(cls, path: Path) -> Voice:
        """An ONNX artifact in ONNX Runtime; a Core ML package through Core ML itself (macOS only)."""
        if path.suffix == ".mlpackage":
            from voxport.families.vits.artifact import VitsCoremlVoice
            from voxport.runtime.coreml import predict_runner

            return VitsCoremlVoice(path, predict_runner)
        from voxport.families.vits.artifact import VitsArtifactVoice

        return VitsArtifactVoice(path)
