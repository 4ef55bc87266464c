"""Pocket TTS as a registered family: what voxport needs to know about it, without loading a model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from voxport.families.base import Family, MetricSpec, Voice
from voxport.families.pocket_tts.model import FAMILY, PocketTTSAdapter, load_checkpoint
from voxport.families.pocket_tts.settings import PocketSettings


class PocketTTSFamily(Family):
    name: ClassVar[str] = FAMILY
    settings: ClassVar[type[PocketSettings]] = PocketSettings
    #: under teacher forcing every step's backbone hidden state and sampled latent are compared too:
    #: one early wrong frame makes free-running audio diverge, so these localise a fault to a step
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("hidden_snr_db", "min", "hidden SNR dB", tensor="hidden"),
        MetricSpec("latent_snr_db", "min", "latent SNR dB", tensor="latent"),
    )
    #: the runtime layouts `PocketTTSAdapter.runtime_layouts` gives per format (sherpa.py)
    layouts: ClassVar[Mapping[str, tuple[str, ...]]] = {"onnx": ("sherpa-onnx",)}
    checkpoint_hint: ClassVar[str] = "a Kyutai Pocket TTS directory (model.safetensors + its YAML)"

    @classmethod
    def recognizes(cls, path: Path) -> bool:
        directory = path if path.is_dir() else path.parent
        config = directory / "config.json"
        if config.is_file():
            try:
                return json.loads(config.read_text()).get("model_type") == "pocket_tts"
            except (OSError, ValueError, AttributeError):
                return False
        weights = directory / "model.safetensors" if path.is_dir() else path
        if weights.suffix != ".safetensors" or not weights.is_file():
            return False
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                return "flow_lm.bos_emb" in f.keys()  # noqa: SIM118 - safe_open has no __contains__
        except Exception:  # not a safetensors file: some other family's
            return False

    @classmethod
    def load(cls, path: Path, *, trust_pickle: bool = False) -> PocketTTSAdapter:
        return load_checkpoint(path, trust_pickle=trust_pickle)

    @classmethod
    def demo(cls, out_dir: Path, *, seed: int = 0, config: str | None = None) -> Path:
        """A random checkpoint in Kyutai's layout; `config` is 'tiny' (default), a Kyutai config YAML,
        or a release name shipped in the pocket-tts package (e.g. english_18m_2026-10)."""
        from voxport.families.pocket_tts.synthetic import make_checkpoint, named_config

        return make_checkpoint(out_dir, named_config(config or "tiny"), seed=seed)

    @classmethod
    def open_artifact(cls, path: Path) -> Voice:
        """An ONNX artifact in ONNX Runtime; a Core ML package set through Core ML itself (macOS only)."""
        from voxport.families.pocket_tts.artifact import PocketArtifactVoice

        if path.suffix == ".mlpackage":
            from voxport.runtime.coreml import predict_runner

            return PocketArtifactVoice.coreml(path, predict_runner)
        return PocketArtifactVoice.onnx(path)
